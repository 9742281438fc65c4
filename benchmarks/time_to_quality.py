"""Time to a target validation NDCG@10 for training recipes side by side (issue #9.5 / #9.6).

Each recipe is the base config plus ``key=value`` overrides. Every recipe is trained with the project's one
trainer (``Trainer.train_epoch``) and scored on *valid* every ``train.eval_every`` epochs (``--eval-every`` sets it
for every recipe; a recipe may override it, since the evaluation cadence is part of a recipe) under full ranking
and the ``--also`` protocols (default ``sampled:100``). Two clocks run on the same points: wall seconds
(``time.perf_counter``) and CPU seconds of this process (``time.process_time``; with ``--threads 1`` this is the
load-independent figure). Both count training plus the full-ranking validation each recipe needs for model
selection, the same way for every recipe; the extra protocols are scored off the clock. ``train CPU s`` is the
training alone. A recipe stops at ``--max-epochs`` (or its ``train.epochs``), ``--budget-s`` wall seconds or
``--budget-cpu-s`` CPU seconds on the clock, when ``--stop-file``
appears, or after ``--patience`` evaluations without improvement of the full-ranking valid NDCG@10.

The first recipe is the reference: unless ``--target`` is given, the targets are the reference's best
validation NDCG@10 under each protocol (at convergence), and the table gives every recipe's time to reach them
(the reference's own time to its best). The test metrics are those of each recipe's best-validation checkpoint
(full ranking). ``--keep DIR`` keeps each recipe as a run directory ``DIR/NAME`` (config.yaml, best checkpoint,
metrics.json, ranks.parquet, train_log.jsonl) that ``mmseqrec evaluate`` / ``compare`` read like a
``mmseqrec train`` run.

Examples (print ``uptime`` next to the figures)::

    # issue #9.5: ml-100k, the SASRec of the issue: the default recipe within 83 s (test at the best valid)
    python benchmarks/time_to_quality.py --data DIR/ml-100k --preset ml-100k --budget-s 83 --patience 0 \\
        --target 0.0637 --recipe default: --recipe from-end:model.positions=from-end
    # issue #9.6: Beauty, SASRec paper settings (reference) vs a recipe; 1 thread, CPU seconds
    python benchmarks/time_to_quality.py --data DIR/beauty --preset beauty-paper --threads 1 \\
        --eval-every 5 --patience 3 --recipe paper: \\
        --recipe ss64:objective.name=sampled-softmax,train.windows=all,train.batch_size=64,train.eval_every=2
    # objective.name: auto (README "Objective"): ce vs sampled softmax at a fixed CPU budget, 1 thread
    python benchmarks/time_to_quality.py --data DIR/games --threads 1 --eval-every 1 --patience 0 \
        --budget-cpu-s 240 --also --set train.max_len=50 --recipe ce:objective.name=ce \
        --recipe ss:objective.name=sampled-softmax
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from mmseqrec.config import dump_config
from mmseqrec.fileio import atomic_write_text
from mmseqrec.train import Trainer
from mmseqrec.train.checkpoint import save_model
from mmseqrec.train.config import load_experiment
from mmseqrec.train.run import BEST, CONFIG, LOG
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


def _evaluate(trainer, protocol: str, evalset=None):
    return evaluate_model(trainer.model, trainer.split.valid if evalset is None else evalset, trainer.split,
                          trainer.cfg, trainer.device, protocol=protocol, popularity=trainer.popularity)


def run_recipe(name: str, sets: list[str], args) -> dict:
    cfg = load_experiment(None, [f"data.path={args.data}", "train.progress=false", "eval.ks=[10]",
                                 f"train.num_threads={args.threads}", "train.device=cpu", f"seed={args.seed}",
                                 *PRESETS.get(args.preset, []), *args.set, *sets])
    protocols = ["full", *args.also]
    every, max_epochs = cfg.train.eval_every, min(args.max_epochs, cfg.train.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.keep) / name if args.keep else Path(tmp) / "run"
        trainer = Trainer(cfg, run)  # resolves objective.name: auto (trainer.cfg names the loss that trains)
        atomic_write_text(run / CONFIG, dump_config(trainer.cfg))
        wall = cpu = train_cpu = extra = 0.0
        best: dict[str, float] = {}
        best_metrics: dict = {}
        best_state, best_epoch, bad = None, 0, 0
        curve, log = [], []
        for epoch in range(max_epochs):
            c0 = time.process_time()
            row = trainer.train_epoch(epoch)
            dc = time.process_time() - c0
            wall, cpu, train_cpu = wall + row["seconds"], cpu + dc, train_cpu + dc
            log.append({"epoch": epoch + 1, "loss": row["loss"], "seconds": row["seconds"], "cpu_s": dc})
            if (epoch + 1) % every and epoch + 1 < max_epochs:
                continue
            vals = {}
            for p in protocols:
                t0, c0 = time.perf_counter(), time.process_time()
                res = _evaluate(trainer, p)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if p == "full":
                    wall, cpu = wall + dt, cpu + dc
                    full_metrics = res.metrics
                else:
                    extra += dt
                vals[p] = float(res.metrics["NDCG@10"])
            point = {"epoch": epoch + 1, "clock_s": round(wall, 3), "cpu_s": round(cpu, 3), **vals}
            if args.test_curve:  # off the clock, never used for selection: for budget analyses only
                point["test_full"] = round(float(_evaluate(trainer, "full", trainer.split.test
                                                           ).metrics["NDCG@10"]), 5)
            curve.append(point)
            log[-1]["valid"] = vals
            if vals["full"] > best.get("full", -1.0):
                best, best_epoch, bad, best_metrics = dict(vals), epoch + 1, 0, full_metrics
                best_state = copy.deepcopy(trainer.model.state_dict())
            else:
                bad += 1
            for p in protocols:
                best[p] = max(best.get(p, -1.0), vals[p])
            if args.verbose:
                print(f"  {name} epoch {epoch + 1}: wall {wall:.1f}s cpu {cpu:.1f}s valid NDCG@10 "
                      + " ".join(f"{p}={v:.4f}" for p, v in vals.items())
                      + (f" (test {point['test_full']:.4f})" if args.test_curve else ""), flush=True)
            if ((args.patience and bad >= args.patience) or (args.budget_s and wall >= args.budget_s)
                    or (args.budget_cpu_s and cpu >= args.budget_cpu_s)
                    or (args.stop_file and os.path.exists(args.stop_file))):
                break
        if best_state is not None:
            trainer.model.load_state_dict(best_state)
        epochs_run = log[-1]["epoch"] if log else 0
        if args.keep:  # a run directory like `mmseqrec train` writes (best checkpoint = best valid full NDCG@10)
            save_model(run / BEST, trainer.model, {"epoch": str(best_epoch)})
            atomic_write_text(run / LOG, "".join(json.dumps(r) + "\n" for r in log))
            test = trainer.finish({"epoch": epochs_run, "best_epoch": best_epoch, "best_valid": best_metrics})["test"]
        else:
            test = _evaluate(trainer, "full", trainer.split.test).metrics
        return {"recipe": name, "overrides": sets, "objective": trainer.cfg.objective.name,
                "epochs": epochs_run, "eval_every": every,
                "clock_s": round(wall, 3), "cpu_s": round(cpu, 3), "train_cpu_s": round(train_cpu, 3),
                "extra_eval_s": round(extra, 1), "best_epoch": best_epoch, "best_valid": best,
                "test_NDCG@10": float(test["NDCG@10"]),
                "test_HR@10": float(test["HR@10"]), "curve": curve}


def _parse_targets(spec: str, protocols: list[str]) -> dict[str, float]:
    """``0.0637`` (full only) or ``full=0.03,sampled:100=0.31`` -> {protocol: target} (inf = no target)."""
    if "=" not in spec:
        return {"full": float(spec), **{p: float("inf") for p in protocols if p != "full"}}
    given = {k: float(v) for k, v in (item.split("=", 1) for item in spec.split(","))}
    return {p: given.get(p, float("inf")) for p in protocols}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="prepared dataset directory")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="base settings (see PRESETS)")
    ap.add_argument("--set", action="append", default=[], help="override for every recipe (key=value)")
    ap.add_argument("--recipe", action="append", default=[],
                    help="NAME:key=value,key=value (the first recipe is the reference)")
    ap.add_argument("--from-json", nargs="+", default=None,
                    help="no training: report the --json files of earlier runs side by side (reference first)")
    ap.add_argument("--also", nargs="*", default=["sampled:100"], help="extra validation protocols (off the clock)")
    ap.add_argument("--target", default=None,
                    help="targets instead of the reference's: a valid NDCG@10 (full), or full=X,sampled:100=Y")
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=None,
                    help="validation cadence of every recipe (train.eval_every; a recipe may override it)")
    ap.add_argument("--patience", type=int, default=10, help="evaluations without improvement (0 = off)")
    ap.add_argument("--budget-s", type=float, default=0.0, help="stop a recipe after this many wall seconds")
    ap.add_argument("--budget-cpu-s", type=float, default=0.0, help="stop a recipe after this many CPU seconds")
    ap.add_argument("--stop-file", default=None,
                    help="stop the current recipe at its next evaluation once this file exists (a documented cap)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", default=None, help="keep each recipe as a run directory DIR/NAME")
    ap.add_argument("--json", default=None, help="also write all results (with curves) to this file")
    ap.add_argument("--test-curve", action="store_true",
                    help="also score test after every evaluation (off the clock; --json curves only)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if not args.from_json and (not args.recipe or not args.data):
        ap.error("--data and at least one --recipe are needed (or --from-json)")
    if args.eval_every is not None:
        args.set = [f"train.eval_every={args.eval_every}", *args.set]
    torch.set_num_threads(args.threads)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    protocols = ["full", *args.also]
    if args.from_json:  # report runs made earlier (e.g. recipes run as separate processes), reference first
        results = [r for f in args.from_json for r in json.loads(Path(f).read_text())]
    else:
        results = []
        for spec in args.recipe:
            name, sets = _overrides(spec)
            res = run_recipe(name, sets, args)
            results.append(res)
            print(f"done {name}: {json.dumps({k: v for k, v in res.items() if k != 'curve'})}", flush=True)
            print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    targets = _parse_targets(args.target, protocols) if args.target else dict(results[0]["best_valid"])
    for r in results:  # first evaluation at or above each target (the reference: its own time to its best)
        r["reached_s"] = {p: next((pt["clock_s"] for pt in r["curve"] if pt[p] >= targets[p]), None)
                          for p in protocols}
        r["reached_cpu_s"] = {p: next((pt["cpu_s"] for pt in r["curve"] if pt[p] >= targets[p]), None)
                              for p in protocols}
    print("\ntargets (valid NDCG@10): " + ", ".join(f"{p} {targets[p]:.4f}" for p in protocols))
    print("clocks: training + full-ranking validation at each recipe's cadence (wall s, CPU s of this process); "
          "'all' = every target reached; 'train CPU s' = training only, whole run")
    head = ["recipe", "eval every", "epochs (best)", "train CPU s", *[f"best valid {p}" for p in protocols],
            *[f"CPU s to {p}" for p in protocols], "CPU s to all", "wall s to all", "test NDCG@10", "test HR@10"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        both = [r["reached_cpu_s"].get(p) for p in protocols if targets[p] != float("inf")]
        both_wall = [r["reached_s"].get(p) for p in protocols if targets[p] != float("inf")]
        cells = [r["recipe"], str(r["eval_every"]), f"{r['epochs']} ({r['best_epoch']})", f"{r['train_cpu_s']:.0f}",
                 *[f"{r['best_valid'].get(p, float('nan')):.4f}" for p in protocols],
                 *[_fmt(r["reached_cpu_s"].get(p)) for p in protocols],
                 _fmt(None if None in both else max(both)), _fmt(None if None in both_wall else max(both_wall)),
                 f"{r['test_NDCG@10']:.4f}", f"{r['test_HR@10']:.4f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
