"""Next-item objectives over target positions: ``bce``, ``sampled-softmax``, ``ce`` and ``gbce``.

All take user states ``h [M, D]``, target ids ``t [M]`` (0 = no target, ignored) and the item matrix
``W [n_items + 1, D]`` (row 0 = padding, never a candidate) and return the mean loss over real targets.
They are dense over ``M`` (no boolean indexing), so they trace under ``torch.compile`` / CUDA graphs.

Negatives are drawn uniformly from ``1..n_items`` on the device of ``h`` with torch; history items are *not*
excluded (as in most reference code except the original SASRec sampler). ``sampled-softmax`` and ``gbce`` use
``n_negatives`` negatives shared by the whole batch; a negative equal to a row's target is masked out of
that row (no accidental hits). ``bce`` draws one negative per position, as the SASRec paper.

gBCE (Petrov & Macdonald, gSASRec, RecSys 2023): with ``alpha = n_negatives / (n_items - 1)`` and
calibration ``t`` the positive term is ``-beta * log sigmoid(s+)`` where
``beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)``; negatives as in BCE; the mean is taken over the
``1 + n_negatives`` terms of each position, as the reference implementation's ``BCEWithLogits``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..config import Config

__all__ = ["ObjectiveConfig", "gbce_beta", "next_item_loss"]


class ObjectiveConfig(Config):
    """Training objective.

    Attributes
    ----------
    name : ``bce`` | ``sampled-softmax`` | ``ce`` | ``gbce``.
    n_negatives : shared negatives per batch for ``sampled-softmax`` and ``gbce``.
    gbce_t : gSASRec calibration ``t`` (0 = plain BCE with N negatives, 1 = fully calibrated).
    positions : ``all`` (every position predicts the next item, the original SASRec objective) or ``last``
        (only the most recent position); ignored by BERT4Rec (cloze).
    """

    name: Literal["bce", "sampled-softmax", "ce", "gbce"] = "bce"
    n_negatives: int = Field(256, ge=1)
    gbce_t: float = Field(0.75, ge=0, le=1)
    positions: Literal["all", "last"] = "all"


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's ``beta`` for ``n_negatives`` sampled out of ``n_items - 1`` and calibration ``t``."""
    alpha = n_negatives / max(n_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def next_item_loss(h: Tensor, targets: Tensor, items: Tensor, cfg: ObjectiveConfig, *,
                   generator: torch.Generator | None = None, negatives: Tensor | None = None) -> Tensor:
    """Mean loss of ``cfg.name`` over rows with ``targets > 0``.

    Parameters
    ----------
    h : ``[M, D]`` states.
    targets : ``[M]`` target ids (0 = ignore).
    items : ``[n_items + 1, D]`` item matrix (row 0 = padding).
    cfg : objective.
    generator : optional torch generator for the negatives.
    negatives : optional explicit negatives (``[M]`` for ``bce``, ``[N]`` otherwise), for tests.
    """
    n_items = items.shape[0] - 1
    if cfg.name != "bce" and not torch.compiler.is_compiling():
        # Drop padding rows before the [M, n_items] / [M, N] products (most rows on short-sequence data);
        # under torch.compile the dense path below keeps shapes static. Same value either way.
        keep = (targets > 0).nonzero().squeeze(1)
        if keep.numel() < targets.numel():
            h, targets = h[keep], targets[keep]
    valid = (targets > 0).to(torch.float32)
    denom = valid.sum().clamp(min=1.0)
    tgt = targets.clamp(min=1)
    if cfg.name == "ce":
        logits = (h @ items[1:].T).float()
        per = F.cross_entropy(logits, tgt - 1, reduction="none")
        return (per * valid).sum() / denom
    pos = (h * items[tgt]).sum(-1).float()
    if cfg.name == "bce":
        neg_ids = negatives if negatives is not None else torch.randint(
            1, n_items + 1, targets.shape, device=h.device, generator=generator)
        neg = (h * items[neg_ids]).sum(-1).float()
        per = F.softplus(-pos) + F.softplus(neg)
        return (per * valid).sum() / denom
    neg_ids = negatives if negatives is not None else torch.randint(
        1, n_items + 1, (cfg.n_negatives,), device=h.device, generator=generator)
    neg = (h @ items[neg_ids].T).float()  # [M, N]
    hit = neg_ids[None, :] == tgt[:, None]
    if cfg.name == "sampled-softmax":
        neg = neg.masked_fill(hit, float("-inf"))
        logits = torch.cat([pos[:, None], neg], 1)
        per = -torch.log_softmax(logits, 1)[:, 0]
        return (per * valid).sum() / denom
    if cfg.name == "gbce":
        beta = gbce_beta(int(neg_ids.shape[0]), n_items, cfg.gbce_t)
        neg_terms = (F.softplus(neg) * (~hit)).sum(1)
        per = (beta * F.softplus(-pos) + neg_terms) / (1 + neg_ids.shape[0])
        return (per * valid).sum() / denom
    raise ValueError(f"unknown objective {cfg.name!r}")
