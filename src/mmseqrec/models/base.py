"""Contracts of the model layer (pure torch, no I/O).

A sequence model is three parts, composed, never subclassed per combination:

* an :class:`ItemEncoder` maps item ids to ``V`` views of width ``d`` (``V = 1`` for an ID table; 2 for the
  LLM-ESR / DMESR dual view). It also gives the item table used to score all items, and may add auxiliary
  losses (e.g. DMESR's contrastive alignment) and a sequence-level mixer (LLM-ESR's cross-attention between
  the views of a user's sequence).
* a :class:`Backbone` (SASRec, BERT4Rec, GRU4Rec) encodes ``[B, L, d]`` item vectors into ``[B, L, d]`` states.
  With ``V`` views the *same* backbone encodes every view (shared weights) and the states are concatenated to
  ``[B, L, V * d]``; items are scored against the concatenated table ``[N + 1, V * d]`` (LLM-ESR's
  concatenated scoring). A gated sum is an item encoder that returns ``V = 1``.
* an objective (``bce``, ``sampled-softmax``, ``ce``, ``gbce``, ``ce-chunked``, ``sampled-softmax-logq``; cloze for
  BERT4Rec; the default ``auto`` is ``ce`` or ``sampled-softmax`` by catalogue size), applied by the one
  :class:`~mmseqrec.models.sequence.SequenceModel`.

Padding id is 0 everywhere; ``mask`` tensors are ``True`` at real (non-padding) positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "Dropout", "ItemEncoder", "dropout"]


class ItemEncoder(nn.Module, ABC):
    """Maps item ids to ``n_views`` vectors of width ``dim``.

    Subclasses set ``self.dim``, ``self.n_views`` and ``self.n_items`` (ids 1..n_items; 0 = padding;
    an encoder may reserve id ``n_items + 1`` as a mask token for BERT4Rec via ``extra_tokens``).
    """

    dim: int
    n_views: int
    n_items: int

    @abstractmethod
    def table(self) -> Tensor:
        """All item vectors, ``[V, n_items + 1 + extra_tokens, dim]``.

        Called once per training step (and once per evaluation), so that content adapters and fusion run per
        item, not per position; ``encode`` and scoring index into it.
        """

    def encode(self, ids: Tensor, table: Tensor | None = None) -> Tensor:
        """Input-side vectors ``[V, *ids.shape, dim]`` (default: index into ``table()``)."""
        t = self.table() if table is None else table
        return t[:, ids]

    def mix_sequence(self, views: Tensor, mask: Tensor) -> Tensor:
        """Sequence-level interaction between views, ``[V, B, L, d] -> [V, B, L, d]``. Default: identity.

        Runs on the *embedded* views: after the backbone's :meth:`Backbone.embed` (scale, positions, dropout)
        and before its :meth:`Backbone.encode` (LLM-ESR's ``log2feats``).
        """
        return views

    def aux_losses(self, ids: Tensor, table: Tensor | None = None) -> dict[str, Tensor]:
        """Extra weighted losses on the items of a batch (``ids`` may contain padding 0). Default: none."""
        return {}

    def target_losses(self, targets: Tensor, table: Tensor | None = None) -> dict[str, Tensor]:
        """Extra weighted losses on the training targets of a batch (``targets`` as the objective sees them:
        next items, or BERT4Rec's cloze targets; 0 = no target). Default: none."""
        return {}


class Backbone(nn.Module, ABC):
    """Encodes item vectors ``x [B, L, d]`` with ``mask [B, L]`` into states ``[B, L, d]``.

    Backbones add their own positional information; sequences are left-padded so the last position is the
    most recent item.
    """

    dim: int
    causal: bool  # True when position t only sees positions <= t (next-item objectives over all positions)
    cloze: bool = False  # trained by cloze masking, scored through an appended mask token (BERT4Rec)
    # the states of real positions do not depend on how many leading padding columns a batch carries, so
    # inference may drop the columns that are padding in every row (exact within float rounding)
    trim_invariant: bool = False

    @abstractmethod
    def forward(self, x: Tensor, mask: Tensor) -> Tensor: ...

    def embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """Input side of :meth:`forward` (scale, positions, dropout); ``forward == encode(embed(x))``.

        Default: identity. Item encoders that mix views (LLM-ESR) do it between ``embed`` and ``encode``.
        """
        return x

    def encode(self, h: Tensor, mask: Tensor) -> Tensor:
        """The rest of :meth:`forward` over embedded inputs (default: ``forward``)."""
        return self.forward(h, mask)


def padding_mask(ids: Tensor) -> Tensor:
    return ids != 0


def xavier_init_(module: nn.Module) -> None:
    """LLM-ESR's init: xavier-normal for every matrix parameter that is not a frozen buffer."""
    for name, p in module.named_parameters():
        if p.requires_grad and p.dim() >= 2 and "norm" not in name:
            torch.nn.init.xavier_normal_(p)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout`` with the same distribution (keep with probability ``1 - p``, scale by ``1 / (1 - p)``).

    On CPU the mask comes from ``rand_like(x) >= p``: torch's CPU ``bernoulli_`` (behind ``F.dropout``) is
    about 4x slower and took 39 % of a SASRec training step (torch.profiler, benchmarks/RESULTS.md). Other
    devices use ``F.dropout`` (fused there).
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return torch.nn.functional.dropout(x, p, True)
    return x * ((torch.rand_like(x) >= p).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Dropout):
    """``nn.Dropout`` that uses :func:`dropout` (same parameters and state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
