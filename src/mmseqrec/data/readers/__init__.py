"""The reader table: one module per ``--format``, imported lazily.

Each module exposes ``read(paths: list[Path], opts: ReaderOptions) -> RawData``. The table is explicit (no
discovery): add a format by adding a line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ...errors import InputError, MmseqrecError
from ..raw import RawData
from .base import ReaderOptions

__all__ = ["GENERATED_FORMATS", "READERS", "ReaderOptions", "get_reader", "read"]

READERS: dict[str, str] = {
    "amazon2023": "mmseqrec.data.readers.amazon2023",
    "amazon2018": "mmseqrec.data.readers.amazon2018",
    "amazon2014": "mmseqrec.data.readers.amazon2014",
    "movielens": "mmseqrec.data.readers.movielens",
    "recbole": "mmseqrec.data.readers.recbole",
    "sasrec-txt": "mmseqrec.data.readers.sasrec_txt",
    "seq-txt": "mmseqrec.data.readers.seq_txt",
    "table": "mmseqrec.data.readers.table",
    "synthetic": "mmseqrec.data.synthetic",
}

#: Formats that generate their data and therefore accept zero input paths.
GENERATED_FORMATS: frozenset[str] = frozenset({"synthetic"})


def get_reader(fmt: str) -> ModuleType:
    """Import the reader module for ``fmt`` (raises :class:`InputError` for an unknown format)."""
    if fmt not in READERS:
        raise InputError(f"unknown format {fmt!r}; choose one of: {', '.join(READERS)}", field="--format")
    try:
        return importlib.import_module(READERS[fmt])
    except ModuleNotFoundError as exc:
        if exc.name != READERS[fmt]:
            raise
        raise MmseqrecError(
            f"format {fmt!r} is not available in this installation ({exc.name} is missing)"
        ) from None


def read(fmt: str, paths: list[Path], opts: ReaderOptions | None = None) -> RawData:
    """Run the reader of ``fmt`` on ``paths``."""
    mod = get_reader(fmt)
    raw = mod.read([Path(p) for p in paths], opts or ReaderOptions())
    if not raw.format:
        raw.format = fmt
    return raw
