"""Errors that reach the user. Each names the file, the line (or row) and the field when known."""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError", "MissingExtraError", "MmseqrecError"]


class MmseqrecError(Exception):
    """Base class for errors the command line reports as one clear message (exit code 2)."""


class InputError(MmseqrecError):
    """Bad input data: names the file, the line/row and the field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = []
        if self.file is not None:
            where.append(self.file)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join([', '.join(where)] if where else [])}{': ' if where else ''}{message}")


class MissingExtraError(MmseqrecError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the optional package {package!r}. Install it with "
            f"`pip install 'mmseqrec[{extra}]'`."
        )


def require(module: str, extra: str, feature: str):
    """Import an optional module lazily, or raise :class:`MissingExtraError` with the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only when extras are absent
        raise MissingExtraError(module.split(".")[0], extra, feature) from exc
