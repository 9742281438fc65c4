"""Run an experiment grid. Resumable: a run whose ``metrics.json`` exists is not trained again, an interrupted
run resumes from its last epoch, and a protocol already re-scored is not re-scored."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import deep_merge, read_yaml
from ..evaluate.protocol import protocol_slug
from ..registry import model_spec
from .config import GridConfig, check_datasets

__all__ = ["RunRecord", "build_stores", "plan_runs", "protocol_slug", "rescore_run", "run_grid"]

_console = Console(emoji=False, stderr=True, soft_wrap=True)


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
    """Every (dataset, variant, backbone, seed) run with its merged config, in execution order: the runs that
    ``grid.stores`` are built from first, then the grid's order.

    Closed-form baselines (``pop``, ``itemknn``) take ``base`` without its ``model`` section (dropout, layers ...
    are backbone options); their own options come from ``backbone_overrides`` or the variant. A variant with a
    ``preset`` merges ``base``, ``backbone_overrides``, the preset file, then its own keys."""
    out = Path(out)
    runs = []
    for ds_name, ds_path in grid.datasets.items():
        for variant, vcfg in grid.variants.items():
            own = {k: v for k, v in vcfg.items() if k != "preset"}
            for bb in grid.backbones_of(variant):
                preset = grid.preset_file(variant, bb)
                for seed in grid.seeds:
                    base = grid.base
                    if model_spec(bb).closed_form:  # pop / itemknn: the shared backbone options do not apply
                        base = {k: v for k, v in base.items() if k != "model"}
                    cfg = deep_merge(base, grid.backbone_overrides.get(bb, {}))
                    if preset is not None:
                        cfg = deep_merge(cfg, read_yaml(preset))
                    cfg = deep_merge(cfg, own)
                    model = dict(cfg.get("model") or {})
                    model["name"] = bb
                    cfg["model"] = model
                    cfg["seed"] = seed
                    cfg["data"] = {**(cfg.get("data") or {}), "path": ds_path}
                    cfg["eval"] = {**(cfg.get("eval") or {}), "protocol": grid.protocols[0]}
                    run_dir = out / "runs" / _slug(ds_name) / _slug(variant) / bb / f"seed{seed}"
                    runs.append(RunRecord(ds_name, variant, bb, seed, run_dir, cfg))
    sources = {(s.variant, s.backbone, s.seed) for s in grid.stores.values()}
    return sorted(runs, key=lambda r: (r.variant, r.backbone, r.seed) not in sources)  # stable


def _store_source(grid: GridConfig, runs: list[RunRecord], dataset: str, name: str) -> RunRecord:
    spec = grid.stores[name]
    return next(r for r in runs if (r.dataset, r.variant, r.backbone, r.seed)
                == (dataset, spec.variant, spec.backbone, spec.seed))


def build_stores(grid: GridConfig, runs: list[RunRecord], done: RunRecord) -> None:
    """Build the stores of ``grid.stores`` whose source run is ``done`` (finished) into its dataset, unless
    already there from that same run; a store of that name from anything else is an
    :class:`~mmseqrec.errors.InputError` (never overwritten)."""
    from ..embed.pipeline import EmbedConfig, run_embed
    from ..embed.runs import RUN_PREFIX
    from ..embed.store import embed_dir
    from ..errors import InputError

    for name in grid.stores:
        if _store_source(grid, runs, done.dataset, name) is not done:
            continue
        path = embed_dir(grid.datasets[done.dataset]) / f"{name}.safetensors"
        if path.exists():
            try:
                built_from = (json.loads(path.with_suffix(".json").read_text()).get("run") or {}).get("path")
            except (OSError, json.JSONDecodeError):
                built_from = None
            if built_from != str(done.run_dir.resolve()):
                raise InputError(f"store {name!r} exists and was not built from {done.run_dir.resolve()} "
                                 f"(its run: {built_from}); rename the store in the grid or remove that file",
                                 file=path, field=f"stores.{name}")
            continue
        res = run_embed(grid.datasets[done.dataset],
                        EmbedConfig(source=f"{RUN_PREFIX}{done.run_dir}", out=name, progress=False))
        _console.print(f"store {name}: {res.path} ({res.matrix.shape[0]} x {res.matrix.shape[1]}) from "
                       f"{done.run_dir}", highlight=False)


def rescore_run(run_dir: str | Path, protocol: str | None = None, *, exclude_history: bool | None = None,
                splits: tuple[str, ...] = ("valid", "test"), device: str | None = None,
                data_dir: str | Path | None = None, reuse: bool = True, force: bool = False) -> dict[str, Any]:
    """Score the best checkpoint of ``run_dir`` on ``splits`` under ``protocol`` and write the eval file
    (:func:`mmseqrec.evaluate.runfiles.write_eval`, the one schema); returns the eval record.

    The one re-scoring function behind ``mmseqrec evaluate`` and ``mmseqrec experiment``. With ``reuse`` a
    setting whose requested splits are already scored is read back instead of scored again.
    ``protocol=None`` / ``exclude_history=None`` keep the run's own settings. ``data_dir`` must hold the
    dataset the run was trained on unless ``force`` (:func:`mmseqrec.train.run.check_data`); the eval file records
    the dataset's identity either way.
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
    run = load_run(run_dir, device=device, data_dir=data_dir, force=force)
    split = leave_one_out(run.dataset.sequences, run.config.data.min_len)
    pop = item_popularity(split.seqs, split.train_end)
    protocol = protocol or run.config.eval.protocol
    results = {s: evaluate_model(run.model, getattr(split, s), split, run.config, run.device, protocol=protocol,
                                 exclude_history=exclude_history, popularity=pop) for s in splits}
    data = {"path": str(run.dataset.path), **run.dataset.identity, "forced": force}
    path = write_eval(run_dir, results, extra={"seed": run.config.seed, "data": data})
    return json.loads(path.read_text())


def check_runs(grid: GridConfig, runs: list[RunRecord]) -> None:
    """Before anything is trained: every dataset is prepared, every run's config validates, and the embedding
    stores its item encoder (general models: the model) reads exist (an :class:`~mmseqrec.errors.InputError` naming what is missing)."""
    from ..embed.store import embed_dir
    from ..errors import InputError
    from ..train.config import load_experiment

    check_datasets(grid)
    for r in runs:
        cfg = load_experiment(base=r.config)
        enc = cfg.item_encoder
        names = [*getattr(enc, "embeddings", list)(), *getattr(enc, "token_embeddings", list)()]
        if getattr(model_spec(r.backbone), "general", False):  # general models name their stores themselves
            names = [*getattr(cfg.model, "embedding_names", list)(), *getattr(cfg.model, "user_embedding_names",
                                                                              list)()]
            if len(grid.protocols) > 1:
                raise InputError(f"general models ({r.backbone}) are scored by full ranking of their multi-target "
                                 f"split only; set protocols: [full]", file=grid._source, field="protocols")
        d = embed_dir(grid.datasets[r.dataset])
        missing = [n for n in dict.fromkeys(names) if not (d / f"{n}.safetensors").exists()
                   and n not in grid.stores]  # the grid builds its own stores
        if missing:
            raise InputError(f"variant {r.variant!r} needs the embedding store(s) {', '.join(missing)} in {d}; "
                             f"create them with `mmseqrec embed {grid.datasets[r.dataset]} ... --out NAME`",
                             file=grid._source, field=f"variants.{r.variant}")


def _result_line(m: dict[str, Any], metrics: list[str], split: str, seconds: float | None) -> str:
    """``split`` metrics (a validation-only grid shows no test numbers), best epoch with its validation value
    of the first metric, seconds."""
    shown = m.get(split) or {}
    valid = m.get("valid") or {}
    sel = next((k for k in metrics if k in valid), None)
    parts = [f"{split} " + ", ".join(f"{k} {shown[k]:.4f}" for k in metrics if k in shown)]
    if m.get("best_epoch") is not None:
        parts.append(f"best epoch {m['best_epoch']}"
                     + (f" (valid {sel} {valid[sel]:.4f})" if sel and split != "valid" else ""))
    if seconds is not None:
        parts.append(f"{seconds:.0f} s")
    return "; ".join(parts)


def run_grid(grid: GridConfig, out: str | Path, *, progress: bool = True, dry_run: bool = False
             ) -> list[RunRecord]:
    """Train and score every run of ``grid`` under ``out``; returns the run records.

    Prints one line when a run starts and one with its result (test metrics, best epoch, seconds), also
    without progress bars. Datasets, configs and embedding stores are checked first (also by ``dry_run``).
    """
    from ..train.config import load_experiment
    from ..train.trainer import train

    runs = plan_runs(grid, out)
    check_runs(grid, runs)
    if dry_run:
        for name, p in grid.datasets.items():
            _console.print(f"dataset {name}: {p} (prepared)", highlight=False)
            for store in grid.stores:
                _console.print(f"store {store} in {p}: from {_store_source(grid, runs, name, store).run_dir}",
                               highlight=False)
    t_all = time.perf_counter()
    for i, r in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {r.dataset} / {r.variant} / {r.backbone} / seed {r.seed}"
        if dry_run:
            _console.print(f"{tag} -> {r.run_dir}", highlight=False)
            continue
        metrics_path = r.run_dir / "metrics.json"
        if metrics_path.exists():
            m = json.loads(metrics_path.read_text())
            _console.print(f"{tag}: done already: {_result_line(m, grid.metrics, grid.report_split, None)}",
                           highlight=False)
        else:
            cfg_dict = deep_merge(r.config, {"train": {"progress": progress}})
            cfg = load_experiment(base=cfg_dict)
            resume = (r.run_dir / "state.json").exists()
            _console.print(f"{tag}: {'resuming' if resume else 'training'} ...", highlight=False)
            t0 = time.perf_counter()
            m = train(cfg, r.run_dir, resume=resume, overwrite=not resume)
            _console.print(f"{tag}: {_result_line(m, grid.metrics, grid.report_split, time.perf_counter() - t0)}",
                           highlight=False)
        build_stores(grid, runs, r)
        for p in grid.protocols[1:]:
            t0 = time.perf_counter()
            res = rescore_run(r.run_dir, p, splits=(grid.report_split,))
            shown = res.get(grid.report_split) or {}
            _console.print(f"{tag}: {p}: {grid.report_split} " + ", ".join(f"{k} {shown[k]:.4f}" for k in grid.metrics
                                                                         if k in shown)
                           + f" ({time.perf_counter() - t0:.0f} s)", highlight=False)
    if not dry_run:
        _console.print(f"{len(runs)} run(s) in {time.perf_counter() - t_all:.0f} s", highlight=False)
    return runs
