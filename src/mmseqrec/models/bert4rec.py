"""BERT4Rec: a bidirectional transformer trained with cloze masking (Sun et al., 2019).

The backbone is :class:`~mmseqrec.models.sasrec.TransformerBackbone` without the causal mask. Masking
(``mask_prob``, 80 % mask token / 10 % random item / 10 % unchanged, plus LLM-ESR's copy of every sequence
with only the last item masked) is done on device by :func:`cloze` and applied by
:class:`~mmseqrec.models.sequence.SequenceModel`. The mask token is id ``n_items + 1``, reserved by the item
encoder (``extra_tokens = 1``). At inference a mask token is appended to the history and its state scores
the next item.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ..config import Config
from .sasrec import TransformerBackbone

__all__ = ["BERT4Rec", "BERT4RecConfig", "cloze", "cloze_batch"]


class BERT4RecConfig(Config):
    """BERT4Rec options (the width comes from the item encoder).

    Attributes
    ----------
    n_layers, n_heads, dropout, max_len, pre_ln, ffn_mult, activation : transformer options (our defaults:
        2 heads, 4x GELU feed-forward as in the BERT4Rec paper; LLM-ESR's ``Bert4Rec`` uses SASRec's block:
        1 head, 1x ReLU, dropout 0.5, see ``configs/presets/llmesr-bert4rec.yaml``).
    block, positions, mask_padding : see :class:`~mmseqrec.models.sasrec.SASRecConfig` (LLM-ESR: ``sasrec``,
        ``from-start``, ``false``).
    mask_prob : probability that a real position is selected as a cloze target (LLM-ESR scripts use 0.6).
    last_item_copy : also train on a copy of each sequence with only its last item masked (LLM-ESR).
    """

    name: Literal["bert4rec"] = "bert4rec"
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(200, ge=1)
    pre_ln: bool = True
    ffn_mult: int = Field(4, ge=1)
    activation: Literal["relu", "gelu"] = "gelu"
    block: Literal["standard", "sasrec"] = "standard"
    positions: Literal["from-end", "from-start"] = "from-end"
    mask_padding: bool = True
    mask_prob: float = Field(0.2, gt=0, lt=1)
    last_item_copy: bool = True


class BERT4Rec(TransformerBackbone):
    """Bidirectional transformer backbone built from a :class:`BERT4RecConfig`."""

    def __init__(self, cfg: BERT4RecConfig, dim: int) -> None:
        super().__init__(dim, cfg.n_layers, cfg.n_heads, cfg.dropout, cfg.max_len, False, cfg.pre_ln,
                         cfg.ffn_mult, cfg.activation, cfg.block, cfg.positions, cfg.mask_padding)
        self.cloze = True
        self.mask_prob = float(cfg.mask_prob)
        self.last_item_copy = bool(cfg.last_item_copy)


def cloze(ids: Tensor, mask_prob: float, n_items: int, mask_id: int,
          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Cloze-mask a left-padded batch ``ids [B, L]`` on its device.

    Returns ``(inputs, targets)``: ``targets`` holds the original item at selected positions and 0 elsewhere;
    of the selected positions 80 % become ``mask_id``, 10 % a uniform random item, 10 % stay unchanged.
    """
    real = ids != 0
    u = torch.rand(ids.shape, device=ids.device, generator=generator)
    selected = real & (u < mask_prob)
    # Reuse u (uniform within [0, mask_prob) on selected positions) for the 80/10/10 choice.
    r = u / max(mask_prob, 1e-12)
    to_mask = selected & (r < 0.8)
    to_rand = selected & (r >= 0.8) & (r < 0.9)
    rand_items = torch.randint(1, n_items + 1, ids.shape, device=ids.device, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_rand, rand_items, inputs)
    targets = torch.where(selected, ids, torch.zeros_like(ids))
    return inputs, targets


def cloze_batch(ids: Tensor, mask_prob: float, n_items: int, mask_id: int, last_item_copy: bool,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT4Rec's training inputs and targets for left-padded windows ``ids [B, L]``.

    Rows ``0..B-1`` are :func:`cloze`-masked; with ``last_item_copy`` rows ``B..2B-1`` repeat the windows with
    only their last item replaced by ``mask_id`` and it as the only target (the original code's ``mask_last``
    instances; at inference the mask token sits at that same last position). Targets are 0 where there is none.
    """
    inputs, targets = cloze(ids, mask_prob, n_items, mask_id, generator)
    if not last_item_copy:
        return inputs, targets
    last_in = ids.clone()
    last_in[:, -1] = torch.where(ids[:, -1] != 0, mask_id, 0)
    last_t = torch.zeros_like(ids)
    last_t[:, -1] = ids[:, -1]
    return torch.cat([inputs, last_in]), torch.cat([targets, last_t])
