"""General (non-sequential) models in the one trainer: BPR triples over a multi-target split.

:class:`GeneralTrainer` is the :class:`~.trainer.Trainer` (same ``fit`` loop and run directory contract:
``config.yaml``, ``model.safetensors``, ``last.safetensors`` + ``optim.safetensors`` + ``state.json``, ``log.jsonl``, ``metrics.json`` with protocol + valid + test,
``ranks.parquet`` with one row per test target); same early stopping on a *validation* metric (default
``Recall@20``), same seeding rules. What differs is the data: the split is ``data.split`` (see
:mod:`mmseqrec.data.general_split`), an epoch is every training (user, item) pair once in a seeded shuffled
order, each with one negative drawn uniformly from the items the user has no training interaction with
(vectorised rejection sampling), and evaluation is :func:`mmseqrec.evaluate.multitarget.evaluate_multi`
(full ranking, training items masked, several targets per user).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import DatasetDir
from ..data.general_split import GeneralSplit, UserItems, general_split
from ..embed.store import load_embedding
from ..errors import InputError
from ..evaluate.evaluator import RankingResult
from ..evaluate.multitarget import evaluate_multi
from ..fileio import atomic_write_json
from ..models.graph import GeneralModel
from ..registry import model_spec
from .checkpoint import load_model, save_model
from .closed_form import finish_single_fit
from .config import ExperimentConfig, load_experiment
from .run import BEST, CONFIG, METRICS, RANKS, check_data, resolve_device
from .schedule import set_lr
from .trainer import Trainer

__all__ = ["GeneralRun", "GeneralTrainer", "TripleBatches", "build_general_model", "evaluate_general",
           "is_general", "load_general_run", "load_general_tensors", "stand_in_profiles"]


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
        return (int(self.users.size) + self.batch_size - 1) // self.batch_size

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


def stand_in_profiles(cfg: ExperimentConfig, split: GeneralSplit, interactions, tensors: dict[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """MLLMRec's ``profile_stand_in: item-mean`` (no language model): each user's input is the mean of the item
    features over the items :func:`~mmseqrec.data.general_split.profile_pairs` allows (``profile_source``:
    training items only, or every interaction for the leaky variant); users with none get a zero row.
    Returns ``{profile_key: [n_users + 1, D]}`` (empty for other models)."""
    if getattr(cfg.model, "profile_stand_in", "none") == "none":
        return {}
    from ..data.general_split import profile_pairs
    from ..models.graph import item_features

    feats = item_features(cfg.model, tensors)
    u, i = (torch.from_numpy(a) for a in profile_pairs(split, interactions, cfg.model.profile_source))
    sums = torch.zeros(split.n_users + 1, feats.shape[1]).index_add_(0, u, feats[i])
    counts = torch.bincount(u, minlength=split.n_users + 1).clamp_min(1).float()
    return {cfg.model.profile_key(): sums / counts[:, None]}


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


class GeneralTrainer(Trainer):
    """The one trainer (:class:`~.trainer.Trainer`: epochs, early stopping, checkpoints, resume, log) with
    general-model data: BPR triples, a multi-target split and :func:`evaluate_general`."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        if cfg.data.path is None:
            raise InputError("no dataset directory given", field="data.path")
        self.cfg, self.run, self.resume = cfg, Path(run_dir), resume
        self._check_run_dir(overwrite)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = resolve_device(cfg.train.device)
        self.ds = DatasetDir(cfg.data.path)
        self.split = general_split(self.ds.interactions, self.ds.n_users, self.ds.n_items, str(cfg.data.split))
        if len(self.split.test) == 0:
            most = int(sum(self.split.part(p).counts for p in ("train", "valid", "test")).max(initial=0))
            raise InputError(f"split {self.split.spec} leaves no test targets (no user has enough distinct "
                             f"items; the most any user has is {most})", file=self.ds.path, field="data.split")
        torch.manual_seed(cfg.seed)
        tensors = load_general_tensors(cfg, cfg.data.path, self.ds.n_users, self.ds.n_items)
        tensors.update(stand_in_profiles(cfg, self.split, self.ds.interactions, tensors))
        self.model = build_general_model(cfg, self.split, tensors).to(self.device)
        self.batches = TripleBatches(self.split.train, self.ds.n_items, cfg.train.batch_size, self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # parameter-free models (mostpop) are fitted once, see fit()
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay) \
            if params else None
        self.n_params = int(sum(p.numel() for p in params))
        self._make_run_dir()

    def fit(self) -> dict[str, Any]:
        """The one trainer's loop; a model without parameters (``mostpop``) is scored once instead."""
        if self.optimizer is None:
            return finish_single_fit(self, len(self.split.train), 0.0)
        return super().fit()

    def train_epoch(self, epoch: int, progress=None) -> dict[str, Any]:
        """Every training pair once (seeded order, one negative each); mean loss parts, pairs/s, seconds."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        self.model.train()
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + epoch)
        self.model.on_epoch_start(gen)
        sums: dict[str, float] = {}
        n_batches = n_targets = 0
        task = progress.add_task(f"epoch {epoch + 1}", total=len(self.batches), info="") if progress else None
        t0 = time.perf_counter()
        for i, (users, pos, neg) in enumerate(self.batches.epoch(cfg.seed, epoch)):
            set_lr(self.optimizer, cfg.train, epoch * len(self.batches) + i, len(self.batches))
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
            if task is not None:
                progress.update(task, advance=1)
        seconds = time.perf_counter() - t0
        if task is not None:
            progress.remove_task(task)
        losses = {k: v / max(n_batches, 1) for k, v in sums.items()}
        if any(not math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}: {losses}")
        return {"loss": losses, "targets": n_targets, "targets_per_s": n_targets / max(seconds, 1e-9),
                "seconds": seconds}

    def has_valid(self) -> bool:
        return len(self.split.valid) > 0

    def evaluate_valid(self) -> RankingResult:
        return evaluate_general(self.model, self.split, "valid", self.cfg.eval.ks, self.device,
                                self.cfg.eval.batch_size)

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        """Score test with the best checkpoint; write ranks.parquet then metrics.json."""
        cfg, run = self.cfg, self.run
        if not (run / BEST).exists():
            save_model(run / BEST, self.model, {"epoch": str(state["epoch"])})
        load_model(run / BEST, self.model, self.device)
        res = evaluate_general(self.model, self.split, "test", cfg.eval.ks, self.device, cfg.eval.batch_size)
        res.save_ranks(run / RANKS)
        metrics = {
            **res.setting(), "split": self.split.spec, "targets": "multi", "masked": "train",
            **({"profile_source": cfg.model.profile_source} if hasattr(cfg.model, "profile_source") else {}),
            "seed": cfg.seed, "n_params": self.n_params, "best_epoch": int(state["best_epoch"]),
            "epochs_run": int(state["epoch"]), "valid": state.get("best_valid", {}), "test": res.metrics,
            "data": {"path": str(self.ds.path), **self.ds.identity},
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


def load_general_run(run_dir: str | Path, device: str | None = None, data_dir: str | Path | None = None,
                     force: bool = False) -> GeneralRun:
    """Load ``RUN/config.yaml`` + the best checkpoint of a general model run (``data_dir`` must be the run's
    dataset unless ``force``, see :func:`~.run.check_data`)."""
    run = Path(run_dir)
    if not (run / CONFIG).exists():
        raise InputError("not a run directory (no config.yaml); run `mmseqrec train` first", file=run)
    cfg = load_experiment(run / CONFIG)
    data = data_dir or cfg.data.path
    if data is None:
        raise InputError("the run records no dataset path; pass --data", file=run / CONFIG, field="data.path")
    ds = DatasetDir(data)
    check_data(run, ds, force=force)
    split = general_split(ds.interactions, ds.n_users, ds.n_items, str(cfg.data.split))
    dev = resolve_device(device or cfg.train.device)
    tensors = load_general_tensors(cfg, data, ds.n_users, ds.n_items)
    tensors.update(stand_in_profiles(cfg, split, ds.interactions, tensors))
    model = build_general_model(cfg, split, tensors)
    load_model(run / BEST, model)
    model.to(dev).eval()
    return GeneralRun(run, cfg, model, ds, split, dev)
