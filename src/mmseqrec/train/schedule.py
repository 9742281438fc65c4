"""Learning-rate schedules of ``train.lr_schedule`` / ``train.warmup_epochs``, set per optimiser step.

The rate is a pure function of the global step index (``epoch * steps_per_epoch + i``), so a resumed run continues
the same curve without a scheduler state in the checkpoint.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig

__all__ = ["lr_at", "set_lr"]


def lr_at(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of global step ``step`` (0-based): linear warm-up over ``warmup_epochs``, then ``lr``
    (``constant``) or a half cosine from ``lr`` to 0 at the end of ``epochs`` (``cosine``)."""
    warm = train.warmup_epochs * steps_per_epoch
    if step < warm:
        return train.lr * (step + 1) / warm
    if train.lr_schedule == "constant":
        return train.lr
    total = max(train.epochs * steps_per_epoch - warm, 1.0)
    return train.lr * 0.5 * (1.0 + math.cos(math.pi * min((step - warm) / total, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, train: TrainConfig, step: int, steps_per_epoch: int) -> None:
    """Set every parameter group's rate for ``step`` (no-op for a constant rate without warm-up)."""
    if train.lr_schedule == "constant" and not train.warmup_epochs:
        return
    lr = lr_at(train, step, steps_per_epoch)
    for g in optimizer.param_groups:
        g["lr"] = lr
