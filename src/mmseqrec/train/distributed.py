"""Multi-process training with PyTorch DistributedDataParallel (``torchrun --nproc-per-node N -m mmseqrec train``).

:func:`setup` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and starts the process
group (``nccl`` on CUDA, ``gloo`` on CPU); without it (plain ``mmseqrec train``) nothing changes. The trainer
then:

* **shards users**: every process draws the same shuffled epoch order (same seed); each global batch of
  ``train.batch_size`` users (the effective batch) is split into ``world`` interleaved shards
  (:func:`shard`), one per process. A shard's loss is weighted by ``world * targets(shard) /
  targets(batch)`` (:func:`loss_targets`), so the gradient DDP averages equals the single-process gradient of the whole batch
  (same mean over targets); with ``ce`` and no dropout the runs match up to float rounding. Random draws
  (dropout, negatives, cloze masks) come from per-process streams, so with them the runs agree in
  distribution, not number by number. A process whose shard is empty (last batch smaller than ``world``)
  runs a zero-weighted copy of the batch's first row so that every process takes part in each step.
* **evaluates sharded**: under ``full`` each process ranks every ``world``-th case and the ranks are gathered
  in the original order before the metrics are computed (identical metrics on every process, so early
  stopping agrees); ``sampled``/``candidates`` protocols draw negatives per block of cases, so every process
  evaluates all cases (identical numbers, no speed-up).
* **writes only on rank 0**: the run directory (config, checkpoints, log, metrics, ranks); the best weights
  are broadcast from rank 0 before the test evaluation. Resuming reads the run directory on every process,
  so it must be on a filesystem every node sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "LossModule", "device_for", "gather_ranking", "loss_targets", "setup", "shard", "wrap"]


@dataclass
class DistContext:
    """Rank and world size of this process (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process."""
        if self.enabled:
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, 0)

    def mean_of(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average scalar tensors over processes (one all-reduce)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).reshape(()) for k in keys])
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t = (t / self.world).cpu()
        return {k: t[i] for i, k in enumerate(keys)}


def setup(device: str) -> DistContext:
    """Start the process group when launched by torchrun (``WORLD_SIZE > 1``); return this process's context.

    ``device`` is the configured ``train.device``: with CUDA each process uses ``cuda:LOCAL_RANK`` (returned
    through :func:`device_for`), with ``cpu`` the ``gloo`` backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world=world, local_rank=local)


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """The process's device: ``cuda:LOCAL_RANK`` under torchrun on CUDA, else ``device``."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def shard(ctx: DistContext, rows: np.ndarray, batch):
    """This process's interleaved share ``[rank::world]`` of a batch: ``(rows, batch, empty)``.

    ``rows`` is the per-row host array the batch iterator yields (users or lengths); ``batch`` a
    :class:`~mmseqrec.models.sequence.Batch`. An empty share is replaced by the first row (``empty=True``:
    the caller weights its loss by zero).
    """
    if not ctx.enabled:
        return rows, batch, False
    sl = slice(ctx.rank, None, ctx.world)
    if ctx.rank >= len(rows):
        sl = slice(0, 1)
    fields = {k: v[sl] for k, v in vars(batch).items()}
    return rows[sl], type(batch)(**fields), ctx.rank >= len(rows)


def loss_targets(batch, causal: bool, last: bool) -> torch.Tensor:
    """Targets the objective averages over in ``batch`` (a device tensor; no host synchronisation): causal
    models every position whose input is a real item (``seq[:, :-1] != 0``: the first item of a left-padded
    window is never a target; ``seq[:, -2] != 0`` with ``positions: last``); bidirectional ones the real items
    (cloze masks a random share of them, so the weighting is exact only in expectation)."""
    seq = batch.seq
    if not causal:
        return (seq != 0).sum()
    return (seq[:, -2] != 0).sum() if last else (seq[:, :-1] != 0).sum()


class LossModule(nn.Module):
    """``forward(batch) = model.loss(batch)``: what DDP wraps (DDP synchronises through ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def wrap(ctx: DistContext, model: nn.Module, device: torch.device):
    """A DDP-wrapped :class:`LossModule` of ``model`` (parameters shared with ``model``)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(model), device_ids=ids, find_unused_parameters=False)


def gather_ranking(ctx: DistContext, part, n_cases: int, idx: np.ndarray):
    """Reassemble sharded :class:`~mmseqrec.evaluate.RankingResult` parts (cases ``idx`` of ``n_cases`` on this
    process) in the original case order and recompute the metrics on every process."""
    from ..evaluate.metrics import compute_metrics

    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, (idx, part.ranks, part.tied, part.users, part.targets))
    ranks = np.zeros(n_cases, dtype=part.ranks.dtype)
    tied = np.zeros(n_cases, dtype=np.int64)
    users = np.zeros(n_cases, dtype=np.int64)
    targets = np.zeros(n_cases, dtype=np.int64)
    for i, r, t, u, g in parts:
        ranks[i], tied[i], users[i], targets[i] = r, t, u, g
    part.ranks, part.tied, part.users, part.targets = ranks, tied, users, targets
    part.metrics = compute_metrics(ranks, part.ks, tied=tied, ties=part.ties, n_negatives=None)
    return part
