"""One LightGCN training epoch and one full multi-target evaluation at a given shape (synthetic interactions).

Default: issue #13's shape, 100k users x 50k items x 5M interactions (random 8:1:1 split, LightGCN 3 layers,
dim 64, batch 2048, one negative each); ``--preset small`` is a quick check. Interactions are drawn with a
Zipf-like item popularity so the graph has realistic hubs. Prints one JSON line with the shape, the seconds
of each stage (wall and process CPU: on a busy machine the CPU seconds of a ``--threads 1`` run approximate its
quiet wall time), pairs/s and users/s, ``torch.get_num_threads()`` and the machine load (``os.getloadavg``):
wall timings are only comparable on a quiet machine. ``--max-batches N`` times the first N batches and
extrapolates the epoch (``epoch_estimated`` = measured x training pairs / pairs seen).

Examples::

    python benchmarks/graph_speed.py --threads 2                 # the issue's shape on 2 cores
    python benchmarks/graph_speed.py --preset small --threads 2
    python benchmarks/graph_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import polars as pl
import torch

from mmseqrec.data.general_split import general_split
from mmseqrec.models.graph import LightGCNConfig, build_lightgcn
from mmseqrec.train.general import TripleBatches, evaluate_general

PRESETS = {
    "issue": {"users": 100_000, "items": 50_000, "interactions": 5_000_000},
    "small": {"users": 10_000, "items": 5_000, "interactions": 300_000},
}


def synthetic(users: int, items: int, interactions: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    u = np.sort(rng.integers(1, users + 1, size=interactions))
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    it = rng.choice(np.arange(1, items + 1), size=interactions, p=pop / pop.sum())
    return pl.DataFrame({"user": u, "item": it, "timestamp": np.arange(interactions)})


def _stage(msg: str) -> None:
    """Progress on stderr (the JSON result stays alone on stdout), with the process CPU seconds so far."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg} (process CPU so far {time.process_time():.1f} s; load "
          f"{os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="issue")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--eval-batch", type=int, default=1024)
    ap.add_argument("--max-batches", type=int, default=0, help="stop the epoch early (0 = full epoch); the "
                    "reported pairs/s then extrapolates")
    ap.add_argument("--skip-eval", action="store_true", help="time the training stage only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = PRESETS[args.preset]
    dev = torch.device(args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    df = synthetic(p["users"], p["items"], p["interactions"])
    split = general_split(df, p["users"], p["items"], "random:8:1:1")
    t_data, c_data = time.perf_counter() - t0, time.process_time() - c0
    _stage(f"data + split: {t_data:.1f} s ({len(split.train)} training pairs)")
    u, i = split.train.pairs()
    t0, c0 = time.perf_counter(), time.process_time()
    model = build_lightgcn(LightGCNConfig(n_layers=args.layers), n_users=p["users"], n_items=p["items"],
                           users=torch.from_numpy(u), items=torch.from_numpy(i), tensors={}).to(dev)
    t_graph, c_graph = time.perf_counter() - t0, time.process_time() - c0
    _stage(f"graph: {t_graph:.1f} s")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = TripleBatches(split.train, p["items"], args.batch, dev)
    t0, c0 = time.perf_counter(), time.process_time()
    n_pairs = n_b = 0
    for n_b, (users, pos, neg) in enumerate(batches.epoch(0, 0), 1):
        loss, _ = model.loss(users, pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n_pairs += int(users.numel())
        if args.max_batches and n_b >= args.max_batches:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t_epoch, c_epoch = time.perf_counter() - t0, time.process_time() - c0
    _stage(f"training: {n_b} batches, {n_pairs} pairs in {t_epoch:.1f} s")
    t0, c0 = time.perf_counter(), time.process_time()
    if args.skip_eval:
        n_cases, t_eval, c_eval = int((split.test.counts > 0).sum()), float("nan"), float("nan")
    else:
        n_cases = evaluate_general(model, split, "test", [10, 20], dev, args.eval_batch).metrics["n_cases"]
        t_eval, c_eval = time.perf_counter() - t0, time.process_time() - c0
        _stage(f"evaluation: {t_eval:.1f} s")
    full = len(split.train)
    print(json.dumps({
        "shape": p, "train_pairs": full, "test_users": n_cases, "test_targets": len(split.test),
        "threads": torch.get_num_threads(), "device": str(dev), "loadavg": os.getloadavg(),
        "seconds": {"data+split": round(t_data, 2), "graph": round(t_graph, 2), "epoch_measured": round(t_epoch, 2),
                    "epoch_estimated": round(t_epoch * full / max(n_pairs, 1), 2), "evaluation": round(t_eval, 2)},
        "cpu_seconds": {"data+split": round(c_data, 2), "graph": round(c_graph, 2), "epoch_measured": round(c_epoch, 2),
                        "epoch_estimated": round(c_epoch * full / max(n_pairs, 1), 2), "evaluation": round(c_eval, 2)},
        "pairs_per_s": round(n_pairs / t_epoch, 1), "eval_users_per_s": round(n_cases / t_eval, 1),
    }))


if __name__ == "__main__":
    main()
