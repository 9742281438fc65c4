"""Overhead of the two enrichment engines: ``--engine local`` (one process, SQLite cache) against ``--engine ray``
(Ray Data by shard), with the model-free ``echo`` backend so that only the engine is timed.

A synthetic dataset of ``--items`` items (title + text; every ``--image-every``-th item has a small PNG) is
written to a temporary directory; each engine runs ``item-description`` on a fresh copy. Ray is started once
(``num_cpus=--ray-cpus``) and its start-up is reported apart. A second Ray run on the finished shards measures the
resume path (every shard reused). Prints one JSON line per measurement and the load average.

Examples::

    python benchmarks/enrich_engines.py                          # 20,000 items, shards of 2,000
    python benchmarks/enrich_engines.py --items 2000 --shard-size 250 --ray-cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def write_dataset(root: Path, n: int, image_every: int) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for i in range(1, n + 1):
        if image_every and i % image_every == 0:
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
            images.append(f"images/{i}.png")
        else:
            images.append(None)
    pl.DataFrame({"item": list(range(1, n + 1)), "item_id": [f"i{i}" for i in range(1, n + 1)],
                  "title": [f"Item {i}" for i in range(1, n + 1)], "description": ["some text " * 20] * n,
                  "image": images}, schema_overrides={"item": pl.Int32}).write_parquet(root / "items.parquet")
    pl.DataFrame({"user": [1] * n, "item": list(range(1, n + 1)), "timestamp": list(range(n))},
                 schema_overrides={"user": pl.Int32, "item": pl.Int32}).write_parquet(root / "interactions.parquet")
    (root / "manifest.json").write_text(json.dumps({"n_users": 1, "n_items": n, "format": "synthetic"}))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--image-every", type=int, default=10, help="every N-th item has an image (0: none)")
    ap.add_argument("--shard-size", type=int, default=2_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--actors", type=int, default=1)
    args = ap.parse_args()

    import ray

    from mmseqrec.enrich import BackendConfig, EnrichConfig, run_enrich
    from mmseqrec.enrich.runner import RayOptions

    def report(**kw) -> None:
        print(json.dumps({**kw, "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        base = write_dataset(Path(tmp) / "base", args.items, args.image_every)
        be = BackendConfig(backend="echo", batch_size=args.batch_size)
        for engine in ("local", "ray"):
            ds = Path(tmp) / engine
            shutil.copytree(base, ds)
            if engine == "ray":
                t = time.perf_counter()
                ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
                report(what="ray.init", seconds=round(time.perf_counter() - t, 2))
            cfg = EnrichConfig(task="item-description", engine=engine, backend=be,
                               ray=RayOptions(shard_size=args.shard_size, actors=args.actors))
            runs = ("first", "resume") if engine == "ray" else ("first",)
            for run in runs:
                t = time.perf_counter()
                res = run_enrich(ds, cfg, progress=False)
                s = time.perf_counter() - t
                report(what=f"{engine} {run}", items=args.items, seconds=round(s, 2),
                       items_per_s=round(args.items / s, 1), generated=res.generated, counts=res.counts)
        ray.shutdown()


if __name__ == "__main__":
    main()
