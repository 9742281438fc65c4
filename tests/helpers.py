"""Shared test data: a tiny prepared dataset directory whose next item is learnable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["run_cli", "write_cycle_dataset"]


def write_cycle_dataset(root: Path, n_users: int, n_items: int, seq_len: int) -> Path:
    """Each user walks the item cycle with a step of 1 or 2 from a random start: the next item is
    predictable from the last two, so a sequence model must beat random by far."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(1, n_users + 1):
        start, step = rng.integers(0, n_items), 1 + (u % 2)
        users += [u] * seq_len
        items += ((start + step * np.arange(seq_len)) % n_items + 1).tolist()
        ts += list(range(1000 * u, 1000 * u + seq_len))
    root.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"user": pl.Series(users, dtype=pl.Int32), "item": pl.Series(items, dtype=pl.Int32),
                  "timestamp": pl.Series(ts, dtype=pl.Int64)}).write_parquet(root / "interactions.parquet")
    pl.DataFrame({"item": pl.Series(range(1, n_items + 1), dtype=pl.Int32),
                  "item_id": [f"i{i}" for i in range(1, n_items + 1)],
                  "title": [f"Item {i}" for i in range(1, n_items + 1)]}).write_parquet(root / "items.parquet")
    pl.DataFrame({"user": pl.Series(range(1, n_users + 1), dtype=pl.Int32),
                  "user_id": [f"u{u}" for u in range(1, n_users + 1)]}).write_parquet(root / "users.parquet")
    (root / "manifest.json").write_text(json.dumps({"format": "synthetic", "n_users": n_users,
                                                    "n_items": n_items, "n_interactions": len(items)}))
    return root


def run_cli(args: list[str]) -> int:
    """Run the ``mmseqrec`` entry point; return its exit code (typer exits 0 on success)."""
    from mmseqrec.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0
