"""Wall time to a target validation NDCG@10 for training recipes side by side (issue #9.5 / #9.6).

Each recipe is the base config plus ``key=value`` overrides. Every recipe is trained with the project's one
trainer (``Trainer.train_epoch``) and scored on *valid* after every ``--eval-every`` epochs under full ranking and
``--also`` protocols (default ``sampled:100``). The clock counts training plus the full-ranking validation the
recipe needs for model selection; the extra protocols are scored outside the clock. A recipe stops at
``--max-epochs``, ``--budget-s`` seconds on the clock, or after ``--patience`` evaluations without improvement.

The first recipe is the reference: unless ``--target`` is given, the targets are the reference's best
validation NDCG@10 under each protocol (at convergence), and the table gives every recipe's time to reach them.
The test metrics are those of each recipe's best-validation checkpoint (full ranking).

Examples (2 threads; print ``uptime`` next to the figures)::

    # issue #9.5: ml-100k, the SASRec of the issue: the default recipe within 83 s (test at the best valid)
    python benchmarks/time_to_quality.py --data DIR/ml-100k --preset ml-100k --budget-s 83 --patience 0 \\
        --target 0.0637 --recipe default: --recipe from-end:model.positions=from-end
    # issue #9.6: Beauty, SASRec paper settings (reference) vs our recipe
    python benchmarks/time_to_quality.py --data DIR/beauty --preset beauty-paper \\
        --recipe paper: --recipe ours:objective.name=ce,train.windows=all,train.batch_size=256
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import torch

from mmseqrec.train import Trainer
from mmseqrec.train.config import load_experiment
from mmseqrec.train.trainer import evaluate_model

PRESETS = {
    # issue #9.5: 2 layers, 2 heads, d 64, FFN 256, post-LN, GELU, dropout 0.2, L 50, positions numbered from the
    # oldest item of the window as the reference library does (``model.positions=from-end`` is ours: 0.005-0.01
    # lower test NDCG@10 on two seeds, benchmarks/RESULTS.md), full-softmax CE, leave-one-out, full ranking with
    # history items kept; the training recipe (windows, batch, lr, schedule) is the project's default unless a
    # recipe sets it (the reference library's batch: ``train.batch_size=256``)
    "ml-100k": ["model.n_layers=2", "model.n_heads=2", "item_encoder.dim=64", "model.ffn_mult=4",
                "model.pre_ln=false", "model.activation=gelu", "model.dropout=0.2", "model.positions=from-start",
                "train.max_len=50", "objective.name=ce", "eval.exclude_history=false"],
    # issue #9.6: SASRec paper settings for Amazon Beauty: 2 blocks, d 50, L 50, dropout 0.5, BCE (one negative
    # per position), batch 128, lr 1e-3
    "beauty-paper": ["model.n_layers=2", "model.n_heads=1", "item_encoder.dim=50", "model.dropout=0.5",
                     "train.max_len=50", "objective.name=bce", "train.batch_size=128", "train.lr=0.001",
                     "train.windows=last"],
}


def _overrides(spec: str) -> tuple[str, list[str]]:
    name, _, rest = spec.partition(":")
    return name, [s for s in rest.split(",") if s]


def run_recipe(name: str, sets: list[str], args, targets: dict[str, float] | None) -> dict:
    cfg = load_experiment(None, [f"data.path={args.data}", "train.progress=false", "eval.ks=[10]",
                                 f"train.num_threads={args.threads}", "train.device=cpu", f"seed={args.seed}",
                                 *PRESETS.get(args.preset, []), *args.set, *sets])
    protocols = ["full", *args.also]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, os.path.join(tmp, "run"))
        clock = extra = 0.0
        best: dict[str, float] = {}
        best_state, best_epoch, bad = None, 0, 0
        reached: dict[str, float | None] = {p: None for p in protocols}
        curve = []
        for epoch in range(args.max_epochs):
            row = trainer.train_epoch(epoch)
            clock += row["seconds"]
            if (epoch + 1) % args.eval_every:
                continue
            vals = {}
            for p in protocols:
                t0 = time.perf_counter()
                res = evaluate_model(trainer.model, trainer.split.valid, trainer.split, cfg, trainer.device,
                                     protocol=p, popularity=trainer.popularity)
                dt = time.perf_counter() - t0
                if p == "full":
                    clock += dt
                else:
                    extra += dt
                vals[p] = float(res.metrics["NDCG@10"])
            point = {"epoch": epoch + 1, "clock_s": round(clock, 2), **vals}
            if args.test_curve:  # off the clock, never used for selection: for budget analyses only
                point["test_full"] = round(float(evaluate_model(
                    trainer.model, trainer.split.test, trainer.split, cfg, trainer.device,
                    popularity=trainer.popularity).metrics["NDCG@10"]), 5)
            curve.append(point)
            for p in protocols:
                if targets and reached[p] is None and vals[p] >= targets[p]:
                    reached[p] = clock
            if vals["full"] > best.get("full", -1.0):
                best, best_epoch, bad = dict(vals), epoch + 1, 0
                best_state = copy.deepcopy(trainer.model.state_dict())
            else:
                bad += 1
            for p in protocols:
                best[p] = max(best.get(p, -1.0), vals[p])
            if args.verbose:
                print(f"  {name} epoch {epoch + 1}: clock {clock:.1f}s valid NDCG@10 "
                      + " ".join(f"{p}={v:.4f}" for p, v in vals.items())
                      + (f" (test {point['test_full']:.4f})" if args.test_curve else ""), flush=True)
            if (args.patience and bad >= args.patience) or (args.budget_s and clock >= args.budget_s):
                break
        if best_state is not None:
            trainer.model.load_state_dict(best_state)
        test = evaluate_model(trainer.model, trainer.split.test, trainer.split, cfg, trainer.device,
                              popularity=trainer.popularity).metrics
        return {"recipe": name, "overrides": sets, "epochs": curve[-1]["epoch"] if curve else 0,
                "clock_s": round(clock, 1), "extra_eval_s": round(extra, 1), "best_epoch": best_epoch,
                "best_valid": best, "reached_s": reached, "test_NDCG@10": float(test["NDCG@10"]),
                "test_HR@10": float(test["HR@10"]), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared dataset directory")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="base settings (see PRESETS)")
    ap.add_argument("--set", action="append", default=[], help="override for every recipe (key=value)")
    ap.add_argument("--recipe", action="append", required=True,
                    help="NAME:key=value,key=value (the first recipe is the reference)")
    ap.add_argument("--also", nargs="*", default=["sampled:100"], help="extra validation protocols (off the clock)")
    ap.add_argument("--target", type=float, default=None, help="target valid NDCG@10 (full) instead of the reference's")
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--patience", type=int, default=10, help="evaluations without improvement (0 = off)")
    ap.add_argument("--budget-s", type=float, default=0.0, help="stop a recipe after this many clock seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", default=None, help="also write all results (with curves) to this file")
    ap.add_argument("--test-curve", action="store_true",
                    help="also score test after every evaluation (off the clock; --json curves only)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    results, targets = [], None
    if args.target is not None:
        targets = {"full": args.target, **{p: float("inf") for p in args.also}}
    for i, spec in enumerate(args.recipe):
        name, sets = _overrides(spec)
        res = run_recipe(name, sets, args, targets)
        if i == 0 and targets is None:
            targets = dict(res["best_valid"])
            res["reached_s"] = {p: None for p in targets}
            for pt in res["curve"]:  # the reference's own time to its best
                for p in targets:
                    if res["reached_s"][p] is None and pt[p] >= targets[p]:
                        res["reached_s"][p] = pt["clock_s"]
        results.append(res)
        print(f"done {name}: {json.dumps({k: v for k, v in res.items() if k != 'curve'})}", flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    protocols = ["full", *args.also]
    print("\ntargets (valid NDCG@10): " + ", ".join(f"{p} {targets[p]:.4f}" for p in protocols))
    head = ["recipe", "epochs", "clock s", *[f"best valid {p}" for p in protocols],
            *[f"s to target {p}" for p in protocols], "test NDCG@10", "test HR@10"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        cells = [r["recipe"], str(r["epochs"]), f"{r['clock_s']:.1f}",
                 *[f"{r['best_valid'].get(p, float('nan')):.4f}" for p in protocols],
                 *["-" if r["reached_s"].get(p) is None else f"{r['reached_s'][p]:.1f}" for p in protocols],
                 f"{r['test_NDCG@10']:.4f}", f"{r['test_HR@10']:.4f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
