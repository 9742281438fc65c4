"""The one trainer for every sequence model.

AdamW, bf16 autocast on CUDA (never on CPU), gradient clipping, early stopping on a *validation* metric
(test is scored once, with the best checkpoint, after training), safetensors checkpoints, resume, seeded
determinism, rich progress bars, and a JSONL log with the loss parts, validation metrics, targets/s and
seconds of every epoch.

Determinism: model init uses ``torch.manual_seed(seed)``; each epoch reseeds torch with ``(seed, epoch)``
(dropout, negatives, cloze masks) and shuffles users with ``numpy.random.default_rng([seed, epoch])``, so a
resumed run continues exactly like an uninterrupted one (on CPU; CUDA kernels may add nondeterminism).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import dump_config
from ..data.dataset import DatasetDir
from ..data.split import EvalSet, LeaveOneOut, leave_one_out
from ..errors import InputError, MmseqrecError
from ..fileio import atomic_write_json, atomic_write_text
from ..models.baselines import ClosedFormModel
from ..models.sequence import SequenceModel
from ..registry import model_spec, regularizer_spec
from .batching import TrainBatches
from .checkpoint import (
    load_model,
    load_optimizer,
    read_checkpoint,
    save_model,
    save_optimizer,
    write_checkpoint,
)
from .closed_form import fit_closed_form
from .config import ExperimentConfig, load_experiment
from .distributed import DistContext, device_for, gather_ranking, loss_targets, setup, shard, wrap
from .run import (
    BEST,
    CONFIG,
    LAST,
    LOG,
    METRICS,
    OPTIM,
    RANKS,
    STATE,
    build_model,
    is_run_file,
    item_popularity,
    load_tensors,
    resolve_device,
    training_sequences,
)
from .schedule import set_lr

__all__ = ["Trainer", "evaluate_model", "make_score_fn", "resolve_objective", "train"]

# Keys that may change between a run and its resumption.
_RESUMABLE = {("train", "epochs"), ("train", "patience"), ("train", "progress"), ("train", "device"),
              ("train", "num_threads"), ("train", "compile"), ("data", "path")}


def resolve_objective(cfg: ExperimentConfig, n_items: int, *, note: bool = True) -> ExperimentConfig:
    """``cfg`` with ``objective.name: auto`` resolved for a catalogue of ``n_items`` items (a copy; ``cfg``
    itself when there is nothing to resolve), so that config.yaml and metrics.json name the loss that trained the
    run. ``note`` prints one line on stderr saying what ``auto`` chose and why. Closed-form baselines (``pop``,
    ``itemknn``) train no loss and keep ``auto``."""
    if cfg.objective.name != "auto" or model_spec(cfg.model.name).closed_form:
        return cfg
    if note:
        print(cfg.objective.auto_note(n_items), file=sys.stderr, flush=True)
    return cfg.model_copy(update={"objective": cfg.objective.resolve(n_items)})


def make_score_fn(model: SequenceModel, device: torch.device):
    """``score_fn(histories, candidates | None)`` for :func:`mmseqrec.evaluate.evaluate_ranking`.

    Always float32: autocast is switched off even inside an autocast region (bf16 is for training steps only;
    bf16 scores tie most candidates and lower HR@K), and the model's parameters must be float32.
    """

    @torch.no_grad()
    def score_fn(histories: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(device.type, enabled=False):
            h = histories.to(device)
            s = model.score_all(h) if candidates is None else model.score(h, candidates.to(device))
        if s.dtype != torch.float32:
            raise MmseqrecError(f"evaluation scores must be float32, got {s.dtype}")
        return s

    score_fn.scoring_dtype = "float32"  # type: ignore[attr-defined]
    if hasattr(model, "item_matrix"):  # dot-product model: lets the evaluator rank in item chunks

        @torch.no_grad()
        def user_item(histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.autocast(device.type, enabled=False):
                table = model.item_encoder.table()
                return model.user_states(histories.to(device), table), model.item_matrix(table)

        score_fn.user_item = user_item  # type: ignore[attr-defined]
    return score_fn


def evaluate_model(model: SequenceModel, evalset: EvalSet, split: LeaveOneOut, cfg: ExperimentConfig,
                   device: torch.device, protocol: str | None = None, exclude_history: bool | None = None,
                   popularity: np.ndarray | None = None, dist_ctx: DistContext | None = None):
    """Rank ``evalset`` with ``model`` under ``protocol`` (default ``cfg.eval.protocol``) -> RankingResult.

    With ``dist_ctx`` (torchrun), ``full`` ranking is sharded over the processes and gathered."""
    from ..evaluate import Protocol, evaluate_ranking

    proto = Protocol.parse(protocol or cfg.eval.protocol)
    n_cases, idx = len(evalset), None
    if dist_ctx is not None and dist_ctx.enabled and proto.kind == "full":
        idx = np.arange(dist_ctx.rank, n_cases, dist_ctx.world)
        evalset = EvalSet(users=evalset.users[idx], targets=evalset.targets[idx], hist_end=evalset.hist_end[idx])
    was_training = model.training
    model.eval()
    try:
        res = evaluate_ranking(
            make_score_fn(model, device), evalset, split.seqs,
            proto, tuple(cfg.eval.ks),
            exclude_history=cfg.eval.exclude_history if exclude_history is None else exclude_history,
            max_len=int(cfg.train.max_len), batch_size=cfg.eval.batch_size, device=str(device),
            item_popularity=popularity, item_chunk=cfg.eval.item_chunk,
        )
    finally:
        model.train(was_training)
    return res if idx is None else gather_ranking(dist_ctx, res, n_cases, idx)


def _progress(enabled: bool):
    from ..progress import progress_bar

    return progress_bar("{task.fields[info]}", enabled=enabled, transient=True)


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, prefix + (k,))
        elif va != vb:
            out.append(prefix + (k,))
    return out


class Trainer:
    """Trains ``cfg`` into ``run_dir``.

    Parameters
    ----------
    cfg : the resolved experiment config (``cfg.data.path`` must be set).
    run_dir : output directory.
    resume : continue from ``last.safetensors`` + ``optim.safetensors`` + ``state.json``.
    overwrite : replace an existing run.
    regularizers : extra loss modules passed to the model (e.g. LLM-ESR self-distillation).
    """

    dist = DistContext()  # single process unless __init__ finds torchrun's environment

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False, regularizers: list[torch.nn.Module] | None = None) -> None:
        if cfg.data.path is None:
            raise InputError("no dataset directory given", field="data.path")
        self.run = Path(run_dir)
        self.resume = resume
        self.dist = setup(cfg.train.device)  # torchrun: a process group; otherwise a single process
        self.ds = DatasetDir(cfg.data.path)
        # `auto` resolved here, so that config.yaml / metrics.json record the loss that trains the run
        self.cfg = cfg = resolve_objective(cfg, self.ds.n_items, note=self.dist.is_main)
        self._check_run_dir(overwrite)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = device_for(self.dist, resolve_device(cfg.train.device))
        self.split = leave_one_out(self.ds.sequences, cfg.data.min_len)
        self.popularity = item_popularity(self.split.seqs, self.split.train_end)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        tensors = load_tensors(cfg)
        self.model = build_model(cfg, self.ds.n_items, tensors).to(self.device)
        if isinstance(self.model, ClosedFormModel):  # pop / itemknn: fitted once in fit(), no optimiser
            if self.dist.enabled:
                raise InputError(f"{cfg.model.name} is fitted in closed form: run it without torchrun", field="model")
            self.n_params = self.model.n_stored()
            self._make_run_dir()
            return
        self.causal = not self.model.bidirectional
        if cfg.objective.name == "sampled-softmax-logq":
            self.model.set_sampling_counts(torch.from_numpy(np.asarray(self.popularity)))
        if cfg.objective.negatives_exclude == "history":
            items, indptr = training_sequences(self.split.seqs, self.split.train_end)
            self.model.set_history(torch.from_numpy(items), torch.from_numpy(indptr))
        width = int(cfg.train.max_len) + (1 if self.causal else 0)
        self.batches = TrainBatches(self.split.seqs, self.split.train_end, width, cfg.train.batch_size,
                                    self.device, min_items=2 if self.causal else 1, trim=cfg.train.trim,
                                    windows=cfg.train.windows, stride=cfg.train.window_stride)
        regs = list(regularizers or [])
        for rc in cfg.regularizers:
            regs.append(regularizer_spec(rc.name).build(rc, tensors=tensors, windows=self.batches.matrix,
                                                        n_users=self.ds.n_users, n_items=self.ds.n_items))
        self.model.regularizers.extend(m.to(self.device) for m in regs)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.n_params = int(sum(p.numel() for p in params))
        self._loss = wrap(self.dist, self.model, self.device) if self.dist.enabled else self.model.loss
        self._loss = torch.compile(self._loss) if cfg.train.compile else self._loss
        self._make_run_dir()

    # ------------------------------------------------------------------ run dir
    def _check_run_dir(self, overwrite: bool) -> None:
        run = self.run
        exists = run.exists() and any(run.iterdir())
        if self.resume:
            if not (run / STATE).exists():
                raise InputError("nothing to resume (no state.json)", file=run)
            saved = load_experiment(run / CONFIG).model_dump(mode="json")
            diff = [d for d in _diff(saved, self.cfg.model_dump(mode="json")) if d[:2] not in _RESUMABLE]
            if diff:
                raise InputError("config differs from the run being resumed: "
                                 + ", ".join(".".join(d) for d in diff), file=run / CONFIG)
        elif exists:
            if not overwrite:
                raise InputError("run directory exists and is not empty (use --resume or --overwrite)", file=run)
            foreign = [p.name for p in sorted(run.iterdir()) if not is_run_file(p)]
            if foreign:
                raise InputError(f"--overwrite removes a previous run, but this directory holds {foreign[0]!r}, "
                                 "which `mmseqrec train` did not write: move it away or pick another --out", file=run)
        self._old_files = [p for p in run.iterdir() if is_run_file(p)] if exists and not self.resume else []

    def _make_run_dir(self) -> None:
        """Called once the config, data and model are known to be good: remove every file of the run being
        overwritten (checkpoints, logs, metrics, eval-*.json, ranks-*.parquet), then create the directory."""
        import shutil

        self.dist.barrier()  # every process has checked the directory before rank 0 changes it
        if not self.dist.is_main:
            return
        for p in self._old_files:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ epochs
    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self, epoch: int, progress=None) -> dict[str, Any]:
        """One pass over the training users; returns mean loss parts, targets/s and seconds."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        self.model.train()
        for reg in self.model.regularizers:  # e.g. a self-distillation teacher cached once per epoch
            hook = getattr(reg, "on_epoch_start", None)
            if hook is not None:
                hook(self.model)
        sums: dict[str, torch.Tensor] = {}
        n_batches = n_targets = 0
        task = progress.add_task(f"epoch {epoch + 1}", total=len(self.batches), info="") if progress else None
        t0 = time.perf_counter()
        for i, (lengths, batch) in enumerate(self.batches.epoch(cfg.seed, epoch)):
            set_lr(self.optimizer, cfg.train, epoch * len(self.batches) + i, len(self.batches))
            lengths, batch, weight = self._shard(lengths, batch)
            with self._autocast():
                total, parts = self._loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            (total * weight if self.dist.enabled else total).backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            self.optimizer.step()
            for k, v in (("loss", total), *parts.items()):
                sums[k] = sums.get(k, 0.0) + v.detach().float() * weight  # shard losses weighted as in backward
            n_batches += 1
            n_targets += self.batches.n_targets(lengths, self.causal, cfg.objective.positions == "last") * (weight > 0)
            if task is not None:
                progress.update(task, advance=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        if task is not None:
            progress.remove_task(task)
        if self.dist.enabled:  # mean loss parts over processes, targets summed
            sums = {k: v * n_batches for k, v in self.dist.mean_of({k: v / max(n_batches, 1)
                                                                 for k, v in sums.items()}).items()}
            n_targets = int(self.dist.mean_of({"n": torch.tensor(float(n_targets))})["n"] * self.dist.world)
        losses = {k: float(v) / max(n_batches, 1) for k, v in sums.items()}
        if any(not math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}: {losses}")
        return {"loss": losses, "targets": n_targets, "targets_per_s": n_targets / max(seconds, 1e-9),
                "seconds": seconds}

    def _shard(self, rows: np.ndarray, batch):
        """This process's share of a global batch and its loss weight (see :mod:`.distributed`)."""
        if not self.dist.enabled:
            return rows, batch, 1.0
        count = partial(loss_targets, causal=self.causal, last=self.cfg.objective.positions == "last")
        n_all = count(batch)
        rows, batch, empty = shard(self.dist, rows, batch)
        return rows, batch, 0.0 if empty else self.dist.world * count(batch) / n_all.clamp(min=1)

    def fit(self) -> dict[str, Any]:
        """Train with early stopping on valid, then score test with the best checkpoint; returns metrics."""
        if isinstance(self.model, ClosedFormModel):
            return fit_closed_form(self)
        cfg, run = self.cfg, self.run
        state = {"epoch": 0, "best_metric": None, "best_epoch": 0, "bad_evals": 0, "best_valid": {},
                 "stopped": False}
        log_lines: list[str] = []
        if self.resume:
            state.update(read_checkpoint(run, STATE))
            recorded = (state.get("data") or {}).get("sha256")
            if recorded and recorded != self.ds.identity["sha256"]:
                raise InputError(f"this run was trained on another dataset (sha256 {recorded[:12]}, this one "
                                 f"{self.ds.identity['sha256'][:12]}); cannot resume on it", file=self.ds.path)
            load_model(run / LAST, self.model, self.device)
            load_optimizer(run / OPTIM, self.optimizer)
            if (run / LOG).exists():
                log_lines = [ln for ln in (run / LOG).read_text().splitlines()
                             if ln.strip() and json.loads(ln)["epoch"] <= state["epoch"]]
        state["data"] = {"path": str(self.ds.path), **self.ds.identity}
        if self.dist.is_main:
            atomic_write_text(run / CONFIG, dump_config(cfg))
        metric = cfg.train.select_metric
        has_valid = self.has_valid()
        with _progress(cfg.train.progress and self.dist.is_main) as progress:
            epoch = int(state["epoch"])
            while epoch < cfg.train.epochs and not state["stopped"]:
                row = {"epoch": epoch + 1, **self.train_epoch(epoch, progress)}
                epoch += 1
                best = False
                if has_valid and (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs):
                    t0 = time.perf_counter()
                    res = self.evaluate_valid()
                    row["valid"] = res.metrics
                    row["eval_seconds"] = time.perf_counter() - t0
                    if metric not in res.metrics:
                        raise InputError(f"select_metric {metric!r} not computed (have "
                                         f"{', '.join(res.metrics)})", field="train.select_metric")
                    value = float(res.metrics[metric])
                    if state["best_metric"] is None or value > state["best_metric"]:
                        state.update(best_metric=value, best_epoch=epoch, bad_evals=0, best_valid=res.metrics)
                        best = True
                    else:
                        state["bad_evals"] += 1
                        if cfg.train.patience and state["bad_evals"] >= cfg.train.patience:
                            state["stopped"] = True
                elif not has_valid:
                    state.update(best_epoch=epoch)
                    best = True
                state["epoch"] = epoch
                self._save_checkpoint(state, epoch, best)
                log_lines.append(json.dumps(row))
                if self.dist.is_main:
                    atomic_write_text(run / LOG, "\n".join(log_lines) + "\n")
                if progress.disable is False:
                    v = row.get("valid", {}).get(metric)
                    progress.console.print(
                        f"epoch {epoch}: loss {row['loss']['loss']:.4f}"
                        + (f", valid {metric} {v:.4f}" if v is not None else "")
                        + f", {row['targets_per_s']:.0f} targets/s")
        return self.finish(state)

    def has_valid(self) -> bool:
        """Whether there are validation cases (otherwise the last epoch is the best)."""
        return len(self.split.valid) > 0

    def evaluate_valid(self):
        """Validation ranking under the run's protocol (the metric dict selects the best checkpoint)."""
        return evaluate_model(self.model, self.split.valid, self.split, self.cfg, self.device,
                              popularity=self.popularity, dist_ctx=self.dist)

    def _save_checkpoint(self, state: dict[str, Any], epoch: int, best: bool) -> None:
        """last + optimiser (+ best) + state.json as one unit (:func:`~.checkpoint.write_checkpoint`)."""
        if not self.dist.is_main:
            return
        meta = {"epoch": str(epoch)}
        writers = {LAST: lambda p: save_model(p, self.model, meta), OPTIM: lambda p: save_optimizer(p, self.optimizer)}
        if best:
            writers[BEST] = lambda p: save_model(p, self.model, meta)
        write_checkpoint(self.run, writers, state, STATE)

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        """Score test with the best checkpoint; write metrics.json and ranks.parquet."""
        cfg, run = self.cfg, self.run
        if self.dist.is_main:
            if not (run / BEST).exists():
                save_model(run / BEST, self.model, {"epoch": str(state["epoch"])})
            load_model(run / BEST, self.model, self.device)
        self.dist.broadcast_module(self.model)
        res = evaluate_model(self.model, self.split.test, self.split, cfg, self.device, popularity=self.popularity,
                             dist_ctx=self.dist)
        metrics = {
            **res.setting(), "seed": cfg.seed, "objective": cfg.objective.name,
            "n_params": self.n_params, "best_epoch": int(state["best_epoch"]), "epochs_run": int(state["epoch"]),
            "valid": state.get("best_valid", {}), "test": res.metrics,
            "data": {"path": str(self.ds.path), **self.ds.identity},
        }
        if self.dist.is_main:
            res.save_ranks(run / RANKS)
            atomic_write_json(run / METRICS, metrics)
        return metrics


def train(cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False
          ) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and return the contents of ``metrics.json``."""
    from .general import GeneralTrainer, is_general

    if is_general(cfg):
        return GeneralTrainer(cfg, run_dir, resume=resume, overwrite=overwrite).fit()
    return Trainer(cfg, run_dir, resume=resume, overwrite=overwrite).fit()
