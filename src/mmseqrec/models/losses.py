"""Next-item objectives over target positions: ``bce``, ``sampled-softmax``, ``ce``, ``gbce``, ``ce-chunked`` and
``sampled-softmax-logq``, and ``auto`` (the default), which picks one of them from the catalogue size.

``auto`` (:meth:`ObjectiveConfig.resolve`) is full-softmax ``ce`` for catalogues of at most ``auto_max_items``
(25,000) items and ``sampled-softmax`` (``n_negatives`` shared uniform negatives, 256 by default) above. ``ce``
learns the most per epoch; its ``[targets x items]`` logits make an epoch's cost and memory grow with the
catalogue. By time to quality on one CPU thread ``ce`` beat sampled softmax at 6k and 12k items and was level or
ahead at 24k (README "Objective", benchmarks/RESULTS.md "Which objective by default"); above that, sampled
softmax is the cheaper choice. The trainer resolves ``auto`` once, before training, and records the resolved
name in the run.

All take user states ``h [M, D]``, target ids ``t [M]`` (0 = no target, ignored) and the item matrix
``W [n_items + 1, D]`` (row 0 = padding, never a candidate) and return the mean loss over real targets.
They are dense over ``M`` (no boolean indexing), so they trace under ``torch.compile`` / CUDA graphs.

Negatives are drawn uniformly from ``1..n_items`` on the device of ``h`` with torch; history items are *not*
excluded by default (as in most reference code except the original SASRec sampler). ``sampled-softmax`` and
``gbce`` use ``n_negatives`` negatives shared by the whole batch; a negative equal to a row's target is masked
out of that row (no accidental hits). ``bce`` draws one negative per position, as the SASRec paper; with
``negatives_exclude: history`` each row's negative is uniform over the items outside its user's training
sequence (LLM-ESR's ``random_neq``; :func:`history_negatives`, rejection sampling over the whole batch).

gBCE (Petrov & Macdonald, gSASRec, RecSys 2023): with ``alpha = n_negatives / (n_items - 1)`` and
calibration ``t`` the positive term is ``-beta * log sigmoid(s+)`` where
``beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)``; negatives as in BCE; the mean is taken over the
``1 + n_negatives`` terms of each position, as the reference implementation's ``BCEWithLogits``.

Large catalogues (see docs/scaling.md):

* ``ce-chunked``: the full-softmax ``ce`` without the ``[M, n_items]`` logits. :class:`ChunkedCE` walks the items
  in chunks of ``chunk_size`` rows with an online log-sum-exp in the forward pass and recomputes each chunk's
  softmax in the backward pass, so memory is ``O(M * chunk_size)``; value and gradients equal ``ce``'s.
* ``sampled-softmax-logq``: ``n_negatives`` negatives shared by the batch, drawn *with replacement* from the
  training popularity ``Q(i) = (count_i + 1) / sum_j (count_j + 1)`` (add-one, so every item can be drawn and
  a cold target's ``log Q`` is finite), with the sampling-bias (logQ) correction of Jean et al. (2015) / Yi et
  al. (2019) as TensorFlow's ``sampled_softmax_loss`` applies it: every logit, the target's included, is
  lowered by ``log(n_negatives * Q(i))``; negatives equal to the row's target are masked (no accidental hits).
  The counts come from the trainer (:meth:`~mmseqrec.models.sequence.SequenceModel.set_sampling_counts`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from ..config import Config

__all__ = ["AUTO_MAX_ITEMS", "ChunkedCE", "ObjectiveConfig", "chunked_cross_entropy", "gbce_beta", "history_keys",
           "history_negatives", "logq_from_counts", "next_item_loss"]

#: Largest catalogue that ``objective.name: auto`` trains with full-softmax ``ce`` (measured by time to quality,
#: benchmarks/RESULTS.md "Which objective by default").
AUTO_MAX_ITEMS = 25_000


class ObjectiveConfig(Config):
    """Training objective.

    Attributes
    ----------
    name : ``auto`` (default) | ``bce`` | ``sampled-softmax`` | ``ce`` | ``gbce`` | ``ce-chunked`` |
        ``sampled-softmax-logq``. ``auto`` is ``ce`` for at most ``auto_max_items`` items, else
        ``sampled-softmax`` (:meth:`resolve`); ``bce`` is the SASRec paper's recipe (one negative per position).
    auto_max_items : largest catalogue that ``auto`` trains with full-softmax ``ce``.
    n_negatives : shared negatives per batch for ``sampled-softmax``, ``sampled-softmax-logq`` and ``gbce``.
    gbce_t : gSASRec calibration ``t`` (0 = plain BCE with N negatives, 1 = fully calibrated).
    positions : ``all`` (every position predicts the next item, the original SASRec objective) or ``last``
        (only the most recent position); ignored by BERT4Rec (cloze).
    chunk_size : items per chunk of ``ce-chunked`` (memory ``~ 3 * rows * chunk_size`` floats).
    negatives_exclude : ``none`` (uniform over all items) or ``history`` (``bce`` only: uniform over the items
        outside the user's training sequence, as LLM-ESR's generators; users whose training items cover the
        catalogue draw from all items).
    """

    name: Literal["auto", "bce", "sampled-softmax", "ce", "gbce", "ce-chunked", "sampled-softmax-logq"] = "auto"
    auto_max_items: int = Field(AUTO_MAX_ITEMS, ge=1)
    n_negatives: int = Field(256, ge=1)
    chunk_size: int = Field(65536, ge=1)
    gbce_t: float = Field(0.75, ge=0, le=1)
    positions: Literal["all", "last"] = "all"
    negatives_exclude: Literal["none", "history"] = "none"

    @model_validator(mode="after")
    def _history_needs_bce(self) -> ObjectiveConfig:
        if self.negatives_exclude == "history" and self.name != "bce":
            hint = (" (objective.name is auto, which trains with ce or sampled-softmax: set objective.name: bce)"
                    if self.name == "auto" else "")
            raise ValueError(f"negatives_exclude: history is implemented for the bce objective only{hint}")
        return self

    def resolve(self, n_items: int) -> ObjectiveConfig:
        """The objective that trains a catalogue of ``n_items`` items: ``auto`` becomes ``ce`` (at most
        ``auto_max_items`` items) or ``sampled-softmax``; any other name is returned unchanged."""
        if self.name != "auto":
            return self
        return self.model_copy(update={"name": "ce" if n_items <= self.auto_max_items else "sampled-softmax"})

    def auto_note(self, n_items: int) -> str | None:
        """One line saying what ``auto`` chooses for ``n_items`` items and why (``None`` for any other name)."""
        if self.name != "auto":
            return None
        chosen = self.resolve(n_items)
        if chosen.name == "ce":
            why = (f"{n_items:,} items <= objective.auto_max_items {self.auto_max_items:,}: the full softmax is "
                   "affordable on this catalogue and learns the most per epoch")
        else:
            why = (f"{n_items:,} items > objective.auto_max_items {self.auto_max_items:,}: full-softmax logits "
                   f"cost too much per step, {chosen.n_negatives} uniform negatives shared by each batch")
        return f"objective: auto -> {chosen.name} ({why}; set objective.name to choose another)"


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's ``beta`` for ``n_negatives`` sampled out of ``n_items - 1`` and calibration ``t``."""
    alpha = n_negatives / max(n_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


class ChunkedCE(torch.autograd.Function):
    """Per-row ``logsumexp(h @ W[1:].T) - h . W[t]`` without the ``[M, n_items]`` logits.

    Forward: a running log-sum-exp over item chunks (float32 accumulators). Backward: each chunk's softmax is
    recomputed from the saved log-sum-exp, ``dh = g * (sum_c P_c W_c - W[t])`` and ``dW_c = P_c^T (g h)``
    (minus ``g h`` on the target rows). Under CUDA autocast the backward pass runs with the forward's autocast
    state (bf16 products, float32 accumulators).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, h: Tensor, items: Tensor, tgt: Tensor, chunk: int) -> Tensor:
        n, acc = items.shape[0], torch.promote_types(h.dtype, torch.float32)
        lse = h.new_full((h.shape[0],), float("-inf"), dtype=acc)
        for lo in range(1, n, chunk):
            lse = torch.logaddexp(lse, torch.logsumexp((h @ items[lo:lo + chunk].T).to(acc), 1))
        pos = (h.to(acc) * items[tgt].to(acc)).sum(-1)
        ctx.save_for_backward(h, items, tgt, lse)
        ctx.chunk = chunk
        return lse - pos

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        h, items, tgt, lse = ctx.saved_tensors
        chunk, n, acc = ctx.chunk, items.shape[0], lse.dtype
        g = grad.to(acc)
        dh = torch.zeros(h.shape, dtype=acc, device=h.device)
        dw = torch.zeros(items.shape, dtype=acc, device=items.device) if ctx.needs_input_grad[1] else None
        for lo in range(1, n, chunk):
            w = items[lo:lo + chunk]
            pg = (h @ w.T).to(acc).sub_(lse[:, None]).exp_().mul_(g[:, None])  # g * softmax chunk
            dh += pg.to(w.dtype) @ w
            if dw is not None:
                dw[lo:lo + chunk] += pg.to(h.dtype).T @ h
        dh -= g[:, None] * items[tgt].to(acc)
        if dw is not None:
            dw.index_add_(0, tgt, -(h.to(acc) * g[:, None]))
        return dh.to(h.dtype), (dw.to(items.dtype) if dw is not None else None), None, None


def chunked_cross_entropy(h: Tensor, targets: Tensor, items: Tensor, chunk_size: int = 65536) -> Tensor:
    """Per-row full-softmax cross-entropy over items ``1..n_items`` (``targets`` in ``1..n_items``), chunked."""
    return ChunkedCE.apply(h, items, targets, int(chunk_size))


def logq_from_counts(counts: Tensor) -> Tensor:
    """``log Q`` ``[n_items + 1]`` of ``sampled-softmax-logq``: add-one popularity (``-inf`` for padding)."""
    c = counts.double().clamp_min(0) + 1.0
    c[0] = 0.0
    return torch.log(c / c.sum()).float()


def history_keys(items: Tensor, indptr: Tensor, n_items: int) -> Tensor:
    """Sorted unique keys ``user * (n_items + 1) + item`` of the training items of each user (CSR ``items`` /
    ``indptr``, user ``u`` = row ``u``), without the users whose items cover the whole catalogue."""
    lengths = indptr[1:] - indptr[:-1]
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=items.device), lengths)
    keys = torch.unique(owner * (n_items + 1) + items.long())
    distinct = torch.bincount(keys // (n_items + 1), minlength=lengths.numel())
    return keys[distinct[keys // (n_items + 1)] < n_items]


def history_negatives(users: Tensor, n_items: int, keys: Tensor, generator: torch.Generator | None = None
                      ) -> Tensor:
    """One negative per entry of ``users``, uniform over ``1..n_items`` minus that user's training items.

    Rejection sampling over the whole tensor: draw everything, then redraw only the entries that hit their
    user's history (``keys`` from :func:`history_keys`, looked up with ``searchsorted``) until none does.
    """
    flat = users.reshape(-1).long()
    neg = torch.randint(1, n_items + 1, flat.shape, device=flat.device, generator=generator)
    if keys.numel() == 0:
        return neg.view(users.shape)

    def hits(u: Tensor, i: Tensor) -> Tensor:
        k = u * (n_items + 1) + i
        return keys[torch.searchsorted(keys, k).clamp(max=keys.numel() - 1)] == k

    todo = hits(flat, neg).nonzero().squeeze(1)
    while todo.numel():
        neg[todo] = torch.randint(1, n_items + 1, todo.shape, device=flat.device, generator=generator)
        todo = todo[hits(flat[todo], neg[todo])]
    return neg.view(users.shape)


def next_item_loss(h: Tensor, targets: Tensor, items: Tensor, cfg: ObjectiveConfig, *,
                   generator: torch.Generator | None = None, negatives: Tensor | None = None,
                   log_q: Tensor | None = None) -> Tensor:
    """Mean loss of ``cfg.name`` over rows with ``targets > 0``.

    Parameters
    ----------
    h : ``[M, D]`` states.
    targets : ``[M]`` target ids (0 = ignore).
    items : ``[n_items + 1, D]`` item matrix (row 0 = padding).
    cfg : objective.
    generator : optional torch generator for the negatives.
    negatives : optional explicit negatives (``[M]`` for ``bce``, ``[N]`` otherwise), for tests.
    log_q : ``[n_items + 1]`` sampling log-probabilities (:func:`logq_from_counts`); ``sampled-softmax-logq``.
    """
    if cfg.name == "auto":
        raise ValueError("objective auto is resolved from the catalogue size before training "
                         "(ObjectiveConfig.resolve(n_items))")
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
    if cfg.name == "ce-chunked":
        per = chunked_cross_entropy(h, tgt, items, cfg.chunk_size)
        return (per * valid).sum() / denom
    if cfg.name == "sampled-softmax-logq":
        if log_q is None:
            raise ValueError("sampled-softmax-logq needs the items' sampling log-probabilities (log_q)")
        lq = log_q.to(h.device)
        n_neg = cfg.n_negatives if negatives is None else int(negatives.shape[0])
        neg_ids = negatives if negatives is not None else torch.multinomial(
            lq.exp(), n_neg, replacement=True, generator=generator)
        shift = math.log(n_neg)
        pos = (h * items[tgt]).sum(-1).float() - lq[tgt] - shift
        neg = (h @ items[neg_ids].T).float() - lq[neg_ids][None, :] - shift
        neg = neg.masked_fill(neg_ids[None, :] == tgt[:, None], float("-inf"))
        per = -torch.log_softmax(torch.cat([pos[:, None], neg], 1), 1)[:, 0]
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
