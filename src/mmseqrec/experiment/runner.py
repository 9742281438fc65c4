"""Run an experiment grid. Resumable: a run whose ``metrics.json`` exists is not trained again, an interrupted
run resumes from its last epoch, and a protocol already re-scored is not re-scored."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import deep_merge
from ..evaluate.protocol import protocol_slug
from .config import GridConfig

__all__ = ["RunRecord", "plan_runs", "protocol_slug", "rescore_run", "run_grid"]

_console = Console(stderr=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


@dataclass
class RunRecord:
    dataset: str
    variant: str
    backbone: str
    seed: int
    run_dir: Path
    config: dict[str, Any]


def plan_runs(grid: GridConfig, out: str | Path) -> list[RunRecord]:
    """Every (dataset, variant, backbone, seed) run with its merged config, in execution order."""
    out = Path(out)
    runs = []
    for ds_name, ds_path in grid.datasets.items():
        for variant, vcfg in grid.variants.items():
            backbones = grid.variant_backbones.get(variant, grid.backbones)
            for bb in backbones:
                for seed in grid.seeds:
                    cfg = deep_merge(grid.base, grid.backbone_overrides.get(bb, {}))
                    cfg = deep_merge(cfg, vcfg)
                    model = dict(cfg.get("model") or {})
                    model["name"] = bb
                    cfg["model"] = model
                    cfg["seed"] = seed
                    cfg["data"] = {**(cfg.get("data") or {}), "path": ds_path}
                    cfg["eval"] = {**(cfg.get("eval") or {}), "protocol": grid.protocols[0]}
                    run_dir = out / "runs" / _slug(ds_name) / _slug(variant) / bb / f"seed{seed}"
                    runs.append(RunRecord(ds_name, variant, bb, seed, run_dir, cfg))
    return runs


def rescore_run(run_dir: str | Path, protocol: str | None = None, *, exclude_history: bool | None = None,
                splits: tuple[str, ...] = ("valid", "test"), device: str | None = None,
                data_dir: str | Path | None = None, reuse: bool = True) -> dict[str, Any]:
    """Score the best checkpoint of ``run_dir`` on ``splits`` under ``protocol`` and write the eval file
    (:func:`mmseqrec.evaluate.runfiles.write_eval`, the one schema); returns the eval record.

    The one re-scoring function behind ``mmseqrec evaluate`` and ``mmseqrec experiment``. With ``reuse`` a
    setting whose requested splits are already scored is read back instead of scored again.
    ``protocol=None`` / ``exclude_history=None`` keep the run's own settings.
    """
    from ..data.split import leave_one_out
    from ..evaluate.runfiles import find_eval, write_eval
    from ..train.run import item_popularity, load_run
    from ..train.trainer import evaluate_model

    run_dir = Path(run_dir)
    if reuse and protocol is not None:
        rec = find_eval(run_dir, protocol, exclude_history)
        # test ranks feed the paired tests; validation needs only its metrics
        if rec is not None and all(rec.metrics(s) is not None for s in splits) and (
                "test" not in splits or "test" in rec.ranks):
            return rec.data
    run = load_run(run_dir, device=device, data_dir=data_dir)
    split = leave_one_out(run.dataset.sequences, run.config.data.min_len)
    pop = item_popularity(split.seqs, split.train_end)
    protocol = protocol or run.config.eval.protocol
    results = {s: evaluate_model(run.model, getattr(split, s), split, run.config, run.device, protocol=protocol,
                                 exclude_history=exclude_history, popularity=pop) for s in splits}
    path = write_eval(run_dir, results, extra={"seed": run.config.seed})
    return json.loads(path.read_text())


def run_grid(grid: GridConfig, out: str | Path, *, progress: bool = True, dry_run: bool = False
             ) -> list[RunRecord]:
    """Train and score every run of ``grid`` under ``out``; returns the run records."""
    from ..train.config import load_experiment
    from ..train.trainer import train

    runs = plan_runs(grid, out)
    for i, r in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {r.dataset} / {r.variant} / {r.backbone} / seed {r.seed}"
        if dry_run:
            _console.print(f"{tag} -> {r.run_dir}")
            continue
        metrics_path = r.run_dir / "metrics.json"
        if metrics_path.exists():
            _console.print(f"{tag}: done already, skipped")
        else:
            cfg_dict = deep_merge(r.config, {"train": {"progress": progress}})
            cfg = load_experiment(base=cfg_dict)
            resume = (r.run_dir / "state.json").exists()
            _console.print(f"{tag}: {'resuming' if resume else 'training'}")
            m = train(cfg, r.run_dir, resume=resume, overwrite=not resume)
            shown = m.get(grid.report_split) or {}  # a validation-only grid prints no test numbers
            _console.print(f"{tag}: {grid.report_split} " + ", ".join(f"{k} {shown[k]:.4f}" for k in grid.metrics
                                                                      if k in shown))
        for p in grid.protocols[1:]:
            rescore_run(r.run_dir, p, splits=(grid.report_split,))
    return runs
