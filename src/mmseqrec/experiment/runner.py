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
from ..registry import model_spec
from .config import GridConfig

__all__ = ["RunRecord", "plan_runs", "protocol_slug", "run_grid"]

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
    """Every (dataset, variant, backbone, seed) run with its merged config, in execution order.

    Closed-form baselines (``pop``, ``itemknn``) take ``base`` without its ``model`` section (dropout, layers ...
    are backbone options); their own options come from ``backbone_overrides`` or the variant."""
    out = Path(out)
    runs = []
    for ds_name, ds_path in grid.datasets.items():
        for variant, vcfg in grid.variants.items():
            backbones = grid.variant_backbones.get(variant, grid.backbones)
            for bb in backbones:
                for seed in grid.seeds:
                    base = grid.base
                    if model_spec(bb).closed_form:  # pop / itemknn: the shared backbone options do not apply
                        base = {k: v for k, v in base.items() if k != "model"}
                    cfg = deep_merge(base, grid.backbone_overrides.get(bb, {}))
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


def _rescore(run_dir: Path, protocol: str) -> dict[str, Any]:
    """Score the best checkpoint of ``run_dir`` on valid and test under ``protocol``; writes
    ``eval-<protocol>.json`` and ``ranks-<protocol>.parquet``."""
    from ..data.split import leave_one_out
    from ..fileio import atomic_write_json
    from ..train.run import item_popularity, load_run
    from ..train.trainer import evaluate_model

    slug = protocol_slug(protocol)
    path = run_dir / f"eval-{slug}.json"
    if path.exists():
        return json.loads(path.read_text())
    run = load_run(run_dir)
    split = leave_one_out(run.dataset.sequences, run.config.data.min_len)
    pop = item_popularity(split.seqs, split.train_end)
    valid = evaluate_model(run.model, split.valid, split, run.config, run.device, protocol=protocol, popularity=pop)
    test = evaluate_model(run.model, split.test, split, run.config, run.device, protocol=protocol, popularity=pop)
    test.save_ranks(run_dir / f"ranks-{slug}.parquet")
    res = {"protocol": str(test.protocol), "exclude_history": run.config.eval.exclude_history,
           "seed": run.config.seed, "valid": valid.metrics, "test": test.metrics}
    atomic_write_json(path, res)
    return res


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
            _console.print(f"{tag}: test " + ", ".join(f"{k} {m['test'][k]:.4f}" for k in grid.metrics
                                                      if k in m["test"]))
        for p in grid.protocols[1:]:
            _rescore(r.run_dir, p)
    return runs
