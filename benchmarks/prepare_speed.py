"""Streaming benchmark for ``prepare``: an Amazon-Reviews-2023-shaped reviews JSONL of ``--rows`` lines.

Generates the file with polars (vectorised), then runs ``mmseqrec.data.prepare(format="amazon2023")`` in a
child process and reports wall time, rows/s and the child's peak RSS next to the input size.

    python benchmarks/prepare_speed.py --rows 10000000 [--users 1000000] [--items 200000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

_CHILD = """
import sys, time, json
from mmseqrec.data import prepare
t = time.perf_counter()
ds = prepare("amazon2023", [sys.argv[1]], sys.argv[2], min_user_inter=int(sys.argv[3]), min_item_inter=int(sys.argv[3]))
secs = time.perf_counter() - t
try:  # VmHWM is this process image's own peak (ru_maxrss would include the pre-exec copy of the parent)
    peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": secs, "n_interactions": ds.manifest["n_interactions"],
                  "n_users": ds.n_users, "n_items": ds.n_items, "peak": peak}))
"""


def generate(path: Path, rows: int, users: int, items: int, seed: int = 0, chunk: int = 2_000_000) -> None:
    """Write ``rows`` review lines shaped like Amazon Reviews 2023 (all ten fields, short texts)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            u = rng.integers(0, users, n)
            it = (rng.zipf(1.2, n) % items) if items > 1 else np.zeros(n, dtype=np.int64)
            frame = pl.DataFrame(
                {
                    "rating": rng.integers(1, 6, n).astype(np.float64),
                    "u": u,
                    "i": it,
                    "ts": 1_500_000_000_000 + rng.integers(0, 200_000_000_000, n),
                    "hv": rng.integers(0, 5, n),
                    "vp": rng.random(n) < 0.9,
                }
            ).select(
                pl.col("rating"),
                pl.format("Review {}", pl.col("u") % 997).alias("title"),
                pl.format("Works as described, item {} is fine.", pl.col("i") % 101).alias("text"),
                pl.lit([], dtype=pl.List(pl.Utf8)).alias("images"),
                pl.format("B{}", pl.col("i").cast(pl.Utf8).str.pad_start(9, "0")).alias("asin"),
                pl.format("B{}", pl.col("i").cast(pl.Utf8).str.pad_start(9, "0")).alias("parent_asin"),
                pl.format("AG{}", pl.col("u").cast(pl.Utf8).str.pad_start(26, "X")).alias("user_id"),
                pl.col("ts").alias("timestamp"),
                pl.col("hv").alias("helpful_vote"),
                pl.col("vp").alias("verified_purchase"),
            )
            frame.write_ndjson(fh)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=None, help="default rows // 10")
    ap.add_argument("--items", type=int, default=None, help="default rows // 50")
    ap.add_argument("--kcore", type=int, default=0, help="also apply an iterative k-core (0 = off)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this directory and keep the files")
    args = ap.parse_args(argv)
    users = args.users or max(1, args.rows // 10)
    items = args.items or max(1, args.rows // 50)
    work = args.keep or Path(tempfile.mkdtemp(prefix="mmseqrec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "reviews.jsonl"
    t = time.perf_counter()
    generate(src, args.rows, users, items)
    gen_s = time.perf_counter() - t
    if hasattr(os, "sync"):
        os.sync()  # flush the freshly written file first: timing prepare, not the kernel's write-back
    size = src.stat().st_size
    out = work / "dataset"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(out), str(args.kcore)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(proc.stderr)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = res["peak"]
    report = {
        "rows": args.rows,
        "input_bytes": size,
        "generate_s": round(gen_s, 1),
        "prepare_s": round(res["seconds"], 2),
        "prepare_wall_s_with_startup": round(wall, 2),
        "rows_per_s": round(args.rows / res["seconds"]),
        "peak_rss_bytes": peak,
        "peak_rss_over_input": round(peak / size, 3),
        "n_users": res["n_users"],
        "n_items": res["n_items"],
        "n_interactions": res["n_interactions"],
    }
    print(json.dumps(report, indent=2))
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
