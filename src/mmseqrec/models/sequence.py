"""The one sequence model: item encoder + shared backbone + objective (pure torch, no I/O).

With an item encoder of ``V`` views the same backbone encodes every view (one call on the ``V * B`` stacked
sequences) and the states are concatenated to ``[B, L, V * d]``; items are scored against the concatenated
table ``[n_items + 1, V * d]`` (extra tokens such as BERT4Rec's mask token are never scored).

Training batches (:class:`Batch`) carry left-padded windows ``seq [B, L + 1]`` of each user's training items:
causal backbones (SASRec, GRU4Rec) predict ``seq[:, 1:]`` from ``seq[:, :-1]`` at every position (or only the
last one); bidirectional ones (BERT4Rec) are cloze-masked on device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from .base import Backbone, ItemEncoder
from .bert4rec import cloze_batch
from .losses import ObjectiveConfig, history_keys, history_negatives, logq_from_counts, next_item_loss

__all__ = ["Batch", "Regularizer", "SequenceModel"]


@dataclass
class Batch:
    """A training batch.

    Attributes
    ----------
    seq : ``[B, L + 1]`` left-padded windows of training items (0 = padding), most recent last.
    users : ``[B]`` user ids (for regularisers that look up similar users).
    """

    seq: Tensor
    users: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.seq.to(device, non_blocking=True), self.users.to(device, non_blocking=True))


class Regularizer(Protocol):
    """Extra loss terms: ``forward(model, batch, user_states [B, V*d]) -> {name: weighted loss}``.

    A regulariser may also define ``on_epoch_start(model)``; the trainer calls it before each epoch (e.g. to
    cache a teacher's states).
    """

    def __call__(self, model: SequenceModel, batch: Batch, user_states: Tensor) -> dict[str, Tensor]: ...


class SequenceModel(nn.Module):
    """Item encoder + backbone + objective.

    Parameters
    ----------
    item_encoder : the :class:`ItemEncoder` (must reserve one extra token for a bidirectional backbone).
    backbone : the shared :class:`Backbone`.
    objective : the next-item objective (``auto``, the default, is resolved here from the catalogue size).
    regularizers : optional modules adding named loss parts (e.g. LLM-ESR's self-distillation).
    """

    def __init__(self, item_encoder: ItemEncoder, backbone: Backbone, objective: ObjectiveConfig | None = None,
                 regularizers: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.item_encoder = item_encoder
        self.backbone = backbone
        self.regularizers = nn.ModuleList(regularizers or [])
        self.n_items = int(item_encoder.n_items)
        self.objective = (objective or ObjectiveConfig()).resolve(self.n_items)
        self.max_len = int(getattr(backbone, "max_len", 200))
        # cloze training + mask-token inference (BERT4Rec); SASRec without its causal mask (LLM-ESR) stays next-item
        self.bidirectional = bool(getattr(backbone, "cloze", not getattr(backbone, "causal", True)))
        self.mask_id = self.n_items + 1 if self.bidirectional else None
        self.register_buffer("sampling_log_q", None, persistent=False)  # sampled-softmax-logq only
        self.register_buffer("history", None, persistent=False)  # negatives_exclude: history only

    def set_sampling_counts(self, counts: Tensor) -> None:
        """Training counts ``[n_items + 1]`` that ``sampled-softmax-logq`` samples negatives from."""
        self.sampling_log_q = logq_from_counts(torch.as_tensor(counts)).to(next(self.parameters()).device)

    def set_history(self, items: Tensor, indptr: Tensor) -> None:
        """Each user's training items (CSR, row = user id) that ``negatives_exclude: history`` avoids."""
        dev = next(self.parameters()).device
        self.history = history_keys(torch.as_tensor(items).to(dev), torch.as_tensor(indptr).to(dev), self.n_items)

    def _negatives(self, owners: Callable[[], Tensor], generator: torch.Generator | None) -> Tensor | None:
        """``bce`` negatives for the loss rows, owned by the users ``owners()`` returns, outside those users'
        histories (``None``: the loss draws its own; ``owners`` is only called when histories are excluded)."""
        if self.objective.negatives_exclude != "history":
            return None
        if self.history is None:
            raise RuntimeError("negatives_exclude: history needs the training histories (set_history)")
        return history_negatives(owners(), self.n_items, self.history, generator)

    # ------------------------------------------------------------------ encoding
    def hidden(self, input_ids: Tensor, table: Tensor | None = None) -> Tensor:
        """States ``[B, L, V * d]`` of left-padded ``input_ids [B, L]``."""
        t = self.item_encoder.table() if table is None else table
        mask = input_ids != 0
        views = self.item_encoder.encode(input_ids, t)  # [V, B, L, d]
        v, b, n, d = views.shape
        masks = mask.repeat(v, 1)
        # LLM-ESR's order: embed each view (scale, positions, dropout), mix the views, then the blocks
        h = self.backbone.embed(views.reshape(v * b, n, d), masks)
        h = self.item_encoder.mix_sequence(h.view(v, b, n, d), mask).reshape(v * b, n, d)
        states = self.backbone.encode(h, masks)
        return states.view(v, b, n, -1).permute(1, 2, 0, 3).reshape(b, n, -1)

    def item_matrix(self, table: Tensor | None = None) -> Tensor:
        """Scoring side ``[n_items + 1, V * d]`` (row 0 = padding; extra tokens dropped)."""
        t = self.item_encoder.table() if table is None else table
        t = t[:, : self.n_items + 1]
        return t.permute(1, 0, 2).reshape(self.n_items + 1, -1)

    def _inference_ids(self, input_ids: Tensor) -> Tensor:
        input_ids = input_ids[:, -self.max_len:]
        if getattr(self.backbone, "trim_invariant", False):  # evaluation histories come max_len wide
            real = (input_ids != 0).any(0)
            if bool(real.any()):
                input_ids = input_ids[:, int(real.int().argmax()):]
        if not self.bidirectional:
            return input_ids
        mask_col = torch.full_like(input_ids[:, :1], self.mask_id)
        return torch.cat([input_ids, mask_col], 1)[:, -self.max_len:]

    def user_states(self, input_ids: Tensor, table: Tensor | None = None) -> Tensor:
        """``[B, V * d]``: the last position (causal) or an appended mask token's state (BERT4Rec)."""
        return self.hidden(self._inference_ids(input_ids), table)[:, -1]

    def score_all(self, input_ids: Tensor) -> Tensor:
        """Scores ``[B, n_items + 1]`` for every item; column 0 (padding) is ``-inf``."""
        table = self.item_encoder.table()
        u = self.user_states(input_ids, table)
        s = u @ self.item_matrix(table).T
        s[:, 0] = float("-inf")
        return s

    def score(self, input_ids: Tensor, candidates: Tensor) -> Tensor:
        """Scores ``[B, C]`` of ``candidates [B, C]``.

        Every candidate's score is computed with the same arithmetic (elementwise product, then a sum over the
        feature axis), so equal item vectors give bit-identical scores and tie exactly; a batched ``einsum``
        rounds differently per column.
        """
        table = self.item_encoder.table()
        u = self.user_states(input_ids, table)
        return (u.unsqueeze(1) * self.item_matrix(table)[candidates]).sum(-1)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.hidden(input_ids)

    # ------------------------------------------------------------------ training
    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its named parts (``rec`` + item-encoder aux losses + regulariser terms)."""
        table = self.item_encoder.table()
        items = self.item_matrix(table)
        seq = batch.seq
        if self.bidirectional:
            ids = seq[:, -self.max_len:]
            inputs, targets = cloze_batch(ids, float(getattr(self.backbone, "mask_prob", 0.2)), self.n_items,
                                          self.mask_id, bool(getattr(self.backbone, "last_item_copy", False)),
                                          generator)
            h = self.hidden(inputs, table)
            sel = targets.reshape(-1).nonzero().squeeze(1)  # cloze targets are sparse: gather them
            copies, width = targets.shape[0] // seq.shape[0], targets.shape[1]
            rec = next_item_loss(h.reshape(-1, h.shape[-1])[sel], targets.reshape(-1)[sel], items,
                                 self.objective, generator=generator, log_q=self.sampling_log_q,
                                 negatives=self._negatives(
                                     lambda: batch.users.repeat(copies).repeat_interleave(width)[sel], generator))
            last = h[: seq.shape[0], -1]
        else:
            inputs = seq[:, :-1]
            # a target is predicted only from a real input item: the first item of a left-padded window (input
            # padding) is never a target, as in SASRec's sampler (``pos`` is set only where ``seq`` is)
            targets = seq[:, 1:].masked_fill(inputs == 0, 0)
            h = self.hidden(inputs, table)
            if self.objective.positions == "last":
                rec = next_item_loss(h[:, -1], targets[:, -1], items, self.objective, generator=generator,
                                     log_q=self.sampling_log_q,
                                     negatives=self._negatives(lambda: batch.users, generator))
            else:
                width = targets.shape[1]
                rec = next_item_loss(h.reshape(-1, h.shape[-1]), targets.reshape(-1), items, self.objective,
                                     generator=generator, log_q=self.sampling_log_q,
                                     negatives=self._negatives(lambda: batch.users.repeat_interleave(width),
                                                               generator))
            last = h[:, -1]
        parts: dict[str, Tensor] = {"rec": rec}
        parts.update(self.item_encoder.aux_losses(seq, table))
        parts.update(self.item_encoder.target_losses(targets, table))
        for reg in self.regularizers:
            parts.update(reg(self, batch, last))
        total = sum(parts.values())
        return total, parts
