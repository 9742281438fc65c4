"""Training loop for general (non-sequential) models: BPR triples over a multi-target split.

Same run directory contract as :mod:`.trainer` (``config.yaml``, ``model.safetensors``, ``last.safetensors`` +
``optim.safetensors`` + ``state.json``, ``log.jsonl``, ``metrics.json`` with protocol + valid + test,
``ranks.parquet`` with one row per test target), same early stopping on a *validation* metric (default
``Recall@20``), same seeding rules. What differs is the data: the split is ``data.split`` (see
:mod:`mmseqrec.data.general_split`), an epoch is every training (user, item) pair once in a seeded shuffled
order, each with one negative drawn uniformly from the items the user has no training interaction with
(vectorised rejection sampling), and evaluation is :func:`mmseqrec.evaluate.multitarget.evaluate_multi`
(full ranking, training items masked, several targets per user).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import dump_config
from ..data.dataset import DatasetDir
from ..data.general_split import GeneralSplit, UserItems, general_split
from ..embed.store import load_embedding
from ..errors import InputError
from ..evaluate.evaluator import RankingResult
from ..evaluate.multitarget import evaluate_multi
from ..fileio import atomic_write_json, atomic_write_text
from ..models.graph import GeneralModel
from ..registry import model_spec
from .checkpoint import load_model, load_optimizer, save_model, save_optimizer
from .config import ExperimentConfig, load_experiment
from .run import BEST, CONFIG, LAST, LOG, METRICS, OPTIM, RANKS, STATE, resolve_device

__all__ = ["GeneralRun", "GeneralTrainer", "TripleBatches", "build_general_model", "evaluate_general",
           "is_general", "load_general_run", "load_general_tensors"]


def is_general(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg.model`` is a general (user-item) model of the registry."""
    return bool(getattr(model_spec(cfg.model.name), "general", False))


class TripleBatches:
    """Seeded epochs of ``(users, positives, negatives)`` LongTensors over the training pairs."""

    def __init__(self, train: UserItems, n_items: int, batch_size: int, device: torch.device | str = "cpu"
                 ) -> None:
        self.users, self.items = train.pairs()
        self.n_items, self.batch_size, self.device = int(n_items), int(batch_size), device
        self.keys = np.sort(self.users * (n_items + 1) + self.items)
        if np.any(train.counts >= n_items):
            raise InputError("a user has interacted with every item; no negative can be drawn", field="data")

    def __len__(self) -> int:
        return -(-self.users.size // self.batch_size)

    def negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per user, uniform over the items without a training interaction with that user."""
        neg = rng.integers(1, self.n_items + 1, size=users.size)
        bad = np.arange(users.size)
        while bad.size:
            keys = users[bad] * (self.n_items + 1) + neg[bad]
            idx = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
            bad = bad[self.keys[idx] == keys]
            neg[bad] = rng.integers(1, self.n_items + 1, size=bad.size)
        return neg

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(self.users.size)
        neg = self.negatives(self.users[order], rng)
        for lo in range(0, order.size, self.batch_size):
            sel = order[lo:lo + self.batch_size]
            yield tuple(torch.from_numpy(a).to(self.device)  # type: ignore[misc]
                        for a in (self.users[sel], self.items[sel], neg[lo:lo + self.batch_size]))


def _store(data_dir: str | Path, name: str, rows: int, what: str, field: str) -> torch.Tensor:
    m = np.asarray(load_embedding(data_dir, name).matrix, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != rows:
        raise InputError(f"embedding {name!r} has {m.shape[0]} rows, {what} needs {rows}", field=field)
    return torch.from_numpy(m)


def load_general_tensors(cfg: ExperimentConfig, data_dir: str | Path, n_users: int, n_items: int
                         ) -> dict[str, torch.Tensor]:
    """Item feature stores (``n_items + 1`` rows) and user stores (``n_users + 1`` rows) the model names."""
    out: dict[str, torch.Tensor] = {}
    for n in getattr(cfg.model, "embedding_names", list)():
        out[n] = _store(data_dir, n, n_items + 1, "the item table (n_items + 1)", "model.embeddings")
    for n in getattr(cfg.model, "user_embedding_names", list)():
        out[n] = _store(data_dir, n, n_users + 1, "the user table (n_users + 1)", "model.profiles")
    return out


def build_general_model(cfg: ExperimentConfig, split: GeneralSplit, tensors: dict[str, torch.Tensor]
                        ) -> GeneralModel:
    """The registry's general model for ``cfg.model`` on the split's *training* graph (weights from the torch
    RNG)."""
    u, i = split.train.pairs()
    return model_spec(cfg.model.name).build(cfg.model, n_users=split.n_users, n_items=split.n_items,
                                            users=torch.from_numpy(u), items=torch.from_numpy(i), tensors=tensors)


def evaluate_general(model: GeneralModel, split: GeneralSplit, part: str, ks: list[int] | tuple[int, ...],
                     device: torch.device, batch_size: int = 1024) -> RankingResult:
    """Full ranking of the ``part`` ("valid" / "test") targets, training items masked, in float32."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            emb = model.embeddings()
            return evaluate_multi(lambda users: model.score_users(users, emb).float(), split.part(part),
                                  split.train, split.n_items, ks, batch_size=batch_size, device=device)
    finally:
        model.train(was)


class GeneralTrainer:
    """Trains a general model ``cfg`` into ``run_dir`` (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        from .trainer import Trainer

        if cfg.data.path is None:
            raise InputError("no dataset directory given", field="data.path")
        self.cfg, self.run, self.resume = cfg, Path(run_dir), resume
        Trainer._check_run_dir(self, overwrite)  # type: ignore[arg-type]  # the same run-dir rules
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = resolve_device(cfg.train.device)
        self.ds = DatasetDir(cfg.data.path)
        self.split = general_split(self.ds.interactions, self.ds.n_users, self.ds.n_items, str(cfg.data.split))
        torch.manual_seed(cfg.seed)
        tensors = load_general_tensors(cfg, cfg.data.path, self.ds.n_users, self.ds.n_items)
        self.model = build_general_model(cfg, self.split, tensors).to(self.device)
        self.batches = TripleBatches(self.split.train, self.ds.n_items, cfg.train.batch_size, self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.n_params = int(sum(p.numel() for p in params))

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        self.model.train()
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + epoch)
        self.model.on_epoch_start(gen)
        sums: dict[str, float] = {}
        n_batches = n_targets = 0
        t0 = time.perf_counter()
        for users, pos, neg in self.batches.epoch(cfg.seed, epoch):
            total, parts = self.model.loss(users, pos, neg)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            self.optimizer.step()
            for k, v in (("loss", total.detach()), *parts.items()):
                sums[k] = sums.get(k, 0.0) + float(v)
            n_batches += 1
            n_targets += int(users.numel())
        seconds = time.perf_counter() - t0
        losses = {k: v / max(n_batches, 1) for k, v in sums.items()}
        if any(not math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}: {losses}")
        return {"loss": losses, "targets": n_targets, "targets_per_s": n_targets / max(seconds, 1e-9),
                "seconds": seconds}

    def _evaluate(self, part: str) -> RankingResult:
        return evaluate_general(self.model, self.split, part, self.cfg.eval.ks, self.device,
                                self.cfg.eval.batch_size)

    def fit(self) -> dict[str, Any]:
        """Train with early stopping on valid, then score test with the best checkpoint; returns metrics."""
        cfg, run = self.cfg, self.run
        state: dict[str, Any] = {"epoch": 0, "best_metric": None, "best_epoch": 0, "bad_evals": 0,
                                 "best_valid": {}, "stopped": False}
        log_lines: list[str] = []
        if self.resume:
            state.update(json.loads((run / STATE).read_text()))
            load_model(run / LAST, self.model, self.device)
            load_optimizer(run / OPTIM, self.optimizer)
            if (run / LOG).exists():
                log_lines = [ln for ln in (run / LOG).read_text().splitlines()
                             if ln.strip() and json.loads(ln)["epoch"] <= state["epoch"]]
        atomic_write_text(run / CONFIG, dump_config(cfg))
        metric = cfg.train.select_metric
        has_valid = len(self.split.valid) > 0
        epoch = int(state["epoch"])
        while epoch < cfg.train.epochs and not state["stopped"]:
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            epoch += 1
            if has_valid and (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs):
                t0 = time.perf_counter()
                res = self._evaluate("valid")
                row["valid"], row["eval_seconds"] = res.metrics, time.perf_counter() - t0
                if metric not in res.metrics:
                    raise InputError(f"select_metric {metric!r} not computed (have {', '.join(res.metrics)})",
                                     field="train.select_metric")
                value = float(res.metrics[metric])
                if state["best_metric"] is None or value > state["best_metric"]:
                    state.update(best_metric=value, best_epoch=epoch, bad_evals=0, best_valid=res.metrics)
                    save_model(run / BEST, self.model, {"epoch": str(epoch)})
                else:
                    state["bad_evals"] += 1
                    if cfg.train.patience and state["bad_evals"] >= cfg.train.patience:
                        state["stopped"] = True
            elif not has_valid:
                state["best_epoch"] = epoch
                save_model(run / BEST, self.model, {"epoch": str(epoch)})
            state["epoch"] = epoch
            save_model(run / LAST, self.model, {"epoch": str(epoch)})
            save_optimizer(run / OPTIM, self.optimizer)
            atomic_write_json(run / STATE, state)
            log_lines.append(json.dumps(row))
            atomic_write_text(run / LOG, "\n".join(log_lines) + "\n")
            if cfg.train.progress:
                v = row.get("valid", {}).get(metric)
                print(f"epoch {epoch}: loss {row['loss']['loss']:.4f}"
                      + (f", valid {metric} {v:.4f}" if v is not None else "")
                      + f", {row['targets_per_s']:.0f} pairs/s", flush=True)
        return self.finish(state)

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        """Score test with the best checkpoint; write ranks.parquet then metrics.json."""
        cfg, run = self.cfg, self.run
        if not (run / BEST).exists():
            save_model(run / BEST, self.model, {"epoch": str(state["epoch"])})
        load_model(run / BEST, self.model, self.device)
        res = self._evaluate("test")
        res.save_ranks(run / RANKS)
        metrics = {
            **res.setting(), "split": self.split.spec, "targets": "multi", "masked": "train",
            "seed": cfg.seed, "n_params": self.n_params, "best_epoch": int(state["best_epoch"]),
            "epochs_run": int(state["epoch"]), "valid": state.get("best_valid", {}), "test": res.metrics,
        }
        atomic_write_json(run / METRICS, metrics)
        return metrics


@dataclass
class GeneralRun:
    """A trained general run: config, model (eval mode, best checkpoint), dataset and split."""

    path: Path
    config: ExperimentConfig
    model: GeneralModel
    dataset: DatasetDir
    split: GeneralSplit
    device: torch.device


def load_general_run(run_dir: str | Path, device: str | None = None, data_dir: str | Path | None = None
                     ) -> GeneralRun:
    """Load ``RUN/config.yaml`` + the best checkpoint of a general model run."""
    run = Path(run_dir)
    if not (run / CONFIG).exists():
        raise InputError("not a run directory (no config.yaml); run `mmseqrec train` first", file=run)
    cfg = load_experiment(run / CONFIG)
    data = data_dir or cfg.data.path
    if data is None:
        raise InputError("the run records no dataset path; pass --data", file=run / CONFIG, field="data.path")
    ds = DatasetDir(data)
    split = general_split(ds.interactions, ds.n_users, ds.n_items, str(cfg.data.split))
    dev = resolve_device(device or cfg.train.device)
    model = build_general_model(cfg, split, load_general_tensors(cfg, data, ds.n_users, ds.n_items))
    load_model(run / BEST, model)
    model.to(dev).eval()
    return GeneralRun(run, cfg, model, ds, split, dev)
