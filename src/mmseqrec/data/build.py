"""``prepare``: reader -> canonical tables -> filters -> contiguous ids -> dataset directory (atomically).

Internal ids: users and items are numbered 1..n in the *sorted order of their original ids* — numeric order
when every original id of that kind is an integer (so SASRec/S3-Rec files keep their 1..N ids), string order
otherwise. 0 is padding. Interactions are sorted by (user, timestamp, file order). Every interacted item gets
a row in ``items.parquet``; when the format has no title for an item, the title is its original id and the
number of such items is recorded (``titles_defaulted``).

The new directory is built in a temporary sibling and renamed into place only when complete, so a failure
leaves nothing half-written at ``out``.

``overwrite`` never deletes derived data (``enrich/`` with its generation cache, ``embed/``, anything else a
later stage wrote into the directory): when the new ``interactions.parquet`` and ``items.parquet`` are identical
to the old ones (same sha256 in the manifests) it is carried over into the new directory; otherwise it is moved
to ``DIR.derived-<UTC time>/`` beside it, since it describes the previous data. Either way a note says so.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import InputError
from ..fileio import atomic_dir, atomic_write_json, sha256_file
from .dataset import INTERACTIONS, ITEMS, MANIFEST, USERS, DatasetDir
from .preprocess import PrepareConfig, preprocess
from .raw import RawData
from .readers import GENERATED_FORMATS, READERS, ReaderOptions
from .readers import read as read_raw

__all__ = ["ID_ASSIGNMENT", "SPLIT_DEFAULT", "PrepareConfig", "ReaderOptions", "prepare", "prepare_raw"]

ID_ASSIGNMENT = (
    "1..n in sorted order of the original ids (numeric when all ids are integers, else string "
    "order); 0 = padding"
)
SPLIT_DEFAULT = {"kind": "leave_one_out", "min_len": 3}


class _Hasher(threading.Thread):
    """sha256 of the input files in a background thread (hashlib releases the GIL on large blocks)."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.result: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = [
                {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in self.paths
            ]
        except BaseException as exc:  # noqa: BLE001 - reported on join
            self.error = exc


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg_keys = set(PrepareConfig.model_fields)
    rd_keys = set(ReaderOptions.model_fields)
    cfg, rd = {}, {}
    for k, v in options.items():
        if k in cfg_keys:
            cfg[k] = v
        elif k in rd_keys:
            rd[k] = v
        else:
            raise InputError(f"unknown prepare option {k!r}", field=k)
    return cfg, rd


def _assignment_order(uniq: pl.Series) -> np.ndarray:
    """Permutation putting distinct original ids in assignment order (numeric if all are integers)."""
    num = uniq.cast(pl.Int64, strict=False)
    frame = pl.DataFrame({"id": uniq.cast(pl.Utf8), "num": num}).with_row_index("pos")
    keys = ["num", "id"] if num.null_count() == 0 else ["id"]
    return frame.sort(keys)["pos"].to_numpy()


def _canonical(raw: RawData) -> pl.DataFrame:
    inter = raw.interactions
    if isinstance(inter, pl.LazyFrame):
        inter = inter.collect(engine="streaming")
    src = raw.source_files[0] if raw.source_files else None
    for col in ("user_id", "item_id", "timestamp"):
        if col not in inter.columns:
            raise InputError("reader produced no such column", file=src, field=col)
    cols = [
        c if inter.schema[c.meta.output_name()] == pl.Categorical else c.cast(pl.Utf8)
        for c in (pl.col("user_id"), pl.col("item_id"))
    ] + [pl.col("timestamp").cast(pl.Int64)]
    if "rating" in inter.columns:
        cols.append(pl.col("rating").cast(pl.Float32))
    if "x_label" in inter.columns:
        cols.append(pl.col("x_label").cast(pl.Int8))
    df = inter.select(cols)
    nulls = df.select(pl.all().null_count()).row(0, named=True)
    for col, n in nulls.items():
        if n and col != "rating":
            row = int(df.select(pl.col(col).is_null().arg_max()).item())
            raise InputError(f"missing value (row {row + 1} of the interactions)", file=src, field=col)
    return df


def _code(df: pl.DataFrame, key: str, code: str) -> tuple[pl.DataFrame, pl.Series]:
    """Replace the original-id column ``key`` by integer codes 0..k-1 in assignment order.

    Ids go through a (global) polars Categorical: hashing once per row and no string join, so memory stays
    near 4 bytes per row; readers may already deliver Categorical columns.
    """
    col = df[key]
    if col.dtype != pl.Categorical:
        col = col.cast(pl.Categorical)
    phys = col.to_physical().to_numpy()
    uniq = col.unique()  # distinct values only: small
    used_phys = uniq.to_physical().to_numpy()
    sort = np.argsort(used_phys)
    used, names = used_phys[sort], uniq.cast(pl.Utf8).gather(pl.Series(sort))
    perm = _assignment_order(names)  # perm[k] = index into used/names of the k-th id
    lookup = np.zeros(int(used.max(initial=0)) + 1, dtype=np.uint32)
    lookup[used[perm]] = np.arange(perm.size, dtype=np.uint32)
    codes = pl.Series(code, lookup[phys])
    return df.drop(key).with_columns(codes), names.gather(pl.Series(perm)).cast(pl.Utf8)


def _compact(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the survivors -> contiguous ids 1..k keeping their order (O(n), no sort); also the kept codes."""
    present = np.bincount(codes) > 0
    new_id = np.cumsum(present, dtype=np.int64).astype(np.int32)
    return new_id[codes], np.nonzero(present)[0]


def _items_table(item_ids: pl.Series, items: pl.DataFrame | None) -> tuple[pl.DataFrame, int]:
    base = pl.DataFrame(
        {"item": pl.int_range(1, item_ids.len() + 1, dtype=pl.Int32, eager=True), "item_id": item_ids}
    )
    if items is None or items.height == 0:
        table = base.with_columns(pl.col("item_id").alias("title"))
        return table, table.height
    if "item_id" not in items.columns:
        raise InputError("the item table of this reader has no item_id column", field="item_id")
    side = items.with_columns(pl.col("item_id").cast(pl.Utf8)).unique(
        "item_id", keep="first", maintain_order=True
    )
    if "title" not in side.columns:
        side = side.with_columns(pl.lit(None, pl.Utf8).alias("title"))
    side = side.with_columns(pl.col("title").cast(pl.Utf8))
    table = base.join(side, on="item_id", how="left").sort("item")
    missing = table.select(
        (pl.col("title").is_null() | (pl.col("title").str.strip_chars() == "")).sum()
    ).item()
    table = table.with_columns(
        pl.when(pl.col("title").is_null() | (pl.col("title").str.strip_chars() == ""))
        .then(pl.col("item_id"))
        .otherwise(pl.col("title"))
        .alias("title")
    )
    front = ["item", "item_id", "title"]
    return table.select(front + [c for c in table.columns if c not in front]), int(missing)


_OWN = (INTERACTIONS, ITEMS, USERS, MANIFEST)


def _stage_derived(old: Path, new: Path) -> Path | None:
    """Move what later stages wrote into ``old`` (entries the new build ``new`` does not have) to a clearly named
    sibling ``OLD.derived-<UTC time>``; ``None`` when there is nothing to keep."""
    if not old.is_dir():
        return None
    keep = [p for p in sorted(old.iterdir()) if p.name not in _OWN and not (new / p.name).exists()
            and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if not keep:
        return None
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    staged = old.with_name(f"{old.name}.derived-{stamp}")
    n = 1
    while staged.exists():
        n += 1
        staged = old.with_name(f"{old.name}.derived-{stamp}-{n}")
    staged.mkdir()
    for p in keep:
        os.replace(p, staged / p.name)
    return staged


def _unstage(staged: Path, into: Path) -> list[str]:
    names = sorted(p.name for p in staged.iterdir())
    for name in names:
        os.replace(staged / name, into / name)
    staged.rmdir()
    return names


def _same_data(old_manifest: Path, new_manifest: dict[str, Any]) -> bool:
    try:
        old = json.loads(old_manifest.read_text()).get("outputs") or {}
    except (OSError, ValueError, AttributeError):
        return False
    new = new_manifest.get("outputs") or {}
    return all(old.get(n) and old.get(n) == new.get(n) for n in (INTERACTIONS, ITEMS))


def prepare_raw(
    raw: RawData,
    out: str | Path,
    *,
    config: PrepareConfig | None = None,
    overwrite: bool = False,
    reader_options: ReaderOptions | None = None,
    inputs: list[dict[str, Any]] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> DatasetDir:
    """Turn reader output into a dataset directory (see the module docstring for the id and order rules and
    what ``overwrite`` does with derived data). Messages for the user are appended to ``notes`` (printed to
    stderr when it is ``None``)."""
    cfg = config or PrepareConfig()
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(
            "output directory already exists (pass --overwrite to replace it)", file=out, field="--out"
        )
    hasher = None
    if inputs is None:
        hasher = _Hasher([Path(p) for p in raw.source_files])
        hasher.start()

    df = _canonical(raw)
    n_raw = df.height
    df = df.with_row_index("_row")
    df, user_order = _code(df, "user_id", "user")
    df, item_order = _code(df, "item_id", "item")
    df, filters = preprocess(df, cfg)
    if df.height == 0:
        raise InputError(
            "no interactions left" + (" after filtering" if filters else " in the input"),
            file=raw.source_files[0] if raw.source_files else None,
        )

    # contiguous ids among survivors, keeping the sorted-original-id order
    u_new, u_codes = _compact(df["user"].to_numpy())
    i_new, i_codes = _compact(df["item"].to_numpy())
    df = df.with_columns(pl.Series("user", u_new), pl.Series("item", i_new)).sort(
        ["user", "timestamp", "_row"]
    )
    cols = ["user", "item", "timestamp"] + [c for c in ("rating", "x_label") if c in df.columns]
    inter = df.select(cols)
    users = pl.DataFrame(
        {
            "user": pl.int_range(1, u_codes.size + 1, dtype=pl.Int32, eager=True),
            "user_id": user_order.gather(u_codes),
        }
    )
    items, defaulted = _items_table(item_order.gather(i_codes), raw.items)

    kept: dict[str, Any] = {}
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            inter.write_parquet(tmp / INTERACTIONS, statistics=True)
            items.write_parquet(tmp / ITEMS)
            users.write_parquet(tmp / USERS)
            if raw.assets is not None:
                raw.assets(tmp)
            if hasher is not None:
                hasher.join()
                if hasher.error is not None:
                    raise InputError(f"cannot hash the inputs: {hasher.error}")
                inputs = hasher.result
            outputs = {name: sha256_file(tmp / name) for name in (INTERACTIONS, ITEMS, USERS)}
            manifest: dict[str, Any] = {
                "format": raw.format,
                "source": [str(p) for p in raw.source_files],
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "n_users": int(u_codes.size),
                "n_items": int(i_codes.size),
                "n_interactions": int(inter.height),
                "n_raw_interactions": int(n_raw),
                "has_rating": "rating" in inter.columns,
                "filters": filters,
                "prepare": cfg.model_dump(mode="json"),
                "reader": {
                    **(reader_options.model_dump(mode="json") if reader_options else {}),
                    **{k: v for k, v in raw.options.items()},
                },
                "labels": dict(raw.labels),
                "id_assignment": ID_ASSIGNMENT,
                "order": "user, timestamp, file order",
                "titles_defaulted": defaulted,
                "item_columns": items.columns,
                "split": dict(SPLIT_DEFAULT),
                "inputs": inputs or [],
                "outputs": outputs,
            }
            if extra_manifest:
                manifest.update(extra_manifest)
            atomic_write_json(tmp / MANIFEST, manifest)
            if overwrite:
                kept["same"] = _same_data(out / MANIFEST, manifest)
                kept["staged"] = _stage_derived(out, tmp)
    except BaseException:
        if kept.get("staged") is not None and out.is_dir():  # the swap did not happen: put it back
            _unstage(kept["staged"], out)
        raise
    if kept.get("staged") is not None:
        _report_derived(out, kept["staged"], kept["same"], notes)
    return DatasetDir(out)


def _report_derived(out: Path, staged: Path, same: bool, notes: list[str] | None) -> None:
    if same:
        names = _unstage(staged, out)
        msg = (f"kept {', '.join(n + '/' if (out / n).is_dir() else n for n in names)} in {out}: the interactions "
               "and items are unchanged")
    else:
        msg = (f"the interactions or items changed, so the previous derived data "
               f"({', '.join(sorted(p.name for p in staged.iterdir()))}) no longer matches {out}: moved it to "
               f"{staged} (nothing was deleted)")
    if notes is None:
        print(f"note: {msg}", file=sys.stderr)
    else:
        notes.append(msg)


def prepare(
    format: str,
    paths: list[str | Path] | None,
    out: str | Path,
    *,
    overwrite: bool = False,
    config: PrepareConfig | None = None,
    reader_options: ReaderOptions | None = None,
    notes: list[str] | None = None,
    **options: Any,
) -> DatasetDir:
    """Read ``paths`` in ``format``, filter and write a dataset directory at ``out``.

    Parameters
    ----------
    format
        A key of :data:`mmseqrec.data.readers.READERS` (``amazon2023``, ``movielens``, ``table``, ...).
    paths
        Input files or directories; may be empty for formats that generate data (``synthetic``).
    out
        The dataset directory to create (error if it exists, unless ``overwrite``).
    config, reader_options
        Typed options; ``**options`` may instead name fields of either (``min_user_inter=5``, ``user_col=...``).
    notes
        Messages for the user (what ``overwrite`` did with derived data) are appended here; ``None``: stderr.

    Returns
    -------
    DatasetDir
        The new dataset directory.
    """
    if format not in READERS:
        raise InputError(f"unknown format {format!r}; choose one of: {', '.join(READERS)}", field="--format")
    paths = [Path(p) for p in (paths or [])]
    if not paths and format not in GENERATED_FORMATS:
        raise InputError(f"format {format!r} needs at least one input PATH")
    cfg_kw, rd_kw = _split_options(options)
    from ..config import validate_config

    cfg = (
        config.model_copy(update=cfg_kw)
        if config
        else validate_config(PrepareConfig, cfg_kw, source="options")
    )
    if cfg_kw and config:
        cfg = validate_config(PrepareConfig, cfg.model_dump(), source="options")
    ropts = (
        reader_options.model_copy(update=rd_kw)
        if reader_options
        else validate_config(ReaderOptions, rd_kw, source="options")
    )
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(
            "output directory already exists (pass --overwrite to replace it)", file=out, field="--out"
        )
    raw = read_raw(format, paths, ropts)
    return prepare_raw(raw, out, config=cfg, overwrite=overwrite, reader_options=ropts, notes=notes)
