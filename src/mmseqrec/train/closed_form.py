"""Fitting closed-form baselines (``pop``, ``itemknn``; ``mostpop`` for general splits) inside the one trainer.

Instead of epochs, the model is fitted once from the training prefixes, scored on validation, saved as the best
checkpoint and scored on test by :meth:`Trainer.finish`, so the run directory has the same files as a neural
run: ``config.yaml``, ``model.safetensors``, ``state.json``, ``log.jsonl`` (one row: fit seconds, training
interactions, validation metrics), ``metrics.json`` and ``ranks.parquet``. Resuming refits (deterministic).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..config import dump_config
from ..fileio import atomic_write_text
from .checkpoint import save_model, write_checkpoint
from .run import BEST, CONFIG, LOG, STATE, training_sequences

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["finish_single_fit", "fit_closed_form"]


def fit_closed_form(trainer: Trainer) -> dict[str, Any]:
    """Fit ``trainer.model`` (a ``ClosedFormModel``) and write the run directory; returns ``metrics.json``."""
    cfg, split = trainer.cfg, trainer.split
    atomic_write_text(trainer.run / CONFIG, dump_config(cfg))
    items, indptr = training_sequences(split.seqs, split.train_end)
    t0 = time.perf_counter()
    trainer.model.fit(items, indptr)
    return finish_single_fit(trainer, int(items.size), time.perf_counter() - t0)


def finish_single_fit(trainer: Trainer, n_targets: int, seconds: float) -> dict[str, Any]:
    """The run directory of a model fitted once (no epochs): ``config.yaml``, validation scored through the
    trainer's ``evaluate_valid``, the best checkpoint + ``state.json``, a one-row ``log.jsonl``, then the
    trainer's ``finish`` (test); returns ``metrics.json``. Shared by closed-form and parameter-free general
    models (``mostpop``)."""
    cfg, run = trainer.cfg, trainer.run
    atomic_write_text(run / CONFIG, dump_config(cfg))
    row: dict[str, Any] = {"epoch": 1, "loss": {}, "targets": n_targets,
                           "targets_per_s": n_targets / seconds if seconds > 0 else 0.0, "seconds": seconds}
    state: dict[str, Any] = {"epoch": 1, "best_metric": None, "best_epoch": 1, "bad_evals": 0, "best_valid": {},
                             "stopped": True, "data": {"path": str(trainer.ds.path), **trainer.ds.identity}}
    if trainer.has_valid():
        t0 = time.perf_counter()
        res = trainer.evaluate_valid()
        row.update(valid=res.metrics, eval_seconds=time.perf_counter() - t0)
        state.update(best_valid=res.metrics, best_metric=res.metrics.get(cfg.train.select_metric))
    write_checkpoint(run, {BEST: lambda p: save_model(p, trainer.model, {"epoch": "1"})}, state, STATE)
    atomic_write_text(run / LOG, json.dumps(row) + "\n")
    return trainer.finish(state)
