"""SASRec: a stack of self-attention blocks over left-padded item sequences (Kang & McAuley, 2018).

The causal mask is on by default (position ``t`` sees positions ``<= t``). ``causal: false`` is LLM-ESR's
variant, where the mask is computed but commented out, so training positions see future items (the LLM-ESR
author keeps it on purpose; see docs); the model is still trained on next items and scored at the last
position (only BERT4Rec, ``cloze = True``, is cloze-trained). Attention uses ``F.scaled_dot_product_attention`` with a boolean
key-padding (+ causal) mask; every query may always attend to itself, so rows of padding positions are never
fully masked (no NaNs) while real positions are unaffected.

Positions are learned and counted from the end: the most recent item always gets position ``max_len - 1``,
so a batch trimmed to its longest sequence encodes exactly like the full-width one. ``positions: from-start``
is the SASRec / LLM-ESR code's numbering instead (``1..n`` over the ``n`` real items, 0 at padding).

Without a key-padding mask (``mask_padding: false``, LLM-ESR's backbone) every padding position of the code's
``max_len``-wide batches is a key; all of them are zero rows, so they share one key and one value. The backbone
encodes a trimmed batch with one zero column standing for the ``max_len - L`` padding positions it lacks: its
attention logit carries ``+ log(max_len - L)`` (the softmax of ``c`` equal logits), and under attention dropout its
weight is kept ``Binomial(max_len - L, 1 - p)`` times, as the copies would be. Same values in eval mode (within
float rounding) and the same distribution in training, at ``L + 1`` instead of ``max_len`` positions.

Two blocks: ``block: standard`` (ours: pre-LN by default, the normalised input feeds queries, keys and values,
the residual comes from the un-normalised input) and ``block: sasrec`` (the block of the SASRec PyTorch code
that LLM-ESR copies in ``models/SASRec.py`` / ``models/Bert4Rec.py``: ``Q = LN(x); x = Q + MHA(Q, x, x);
x = LN(x); x = x + FFN(x)``, LayerNorm eps 1e-8, dropout only inside attention and the feed-forward).

The forward pass is split in two so that an item encoder can mix views between them (LLM-ESR's order):
:meth:`TransformerBackbone.embed` (``x * sqrt(d) + positions``, dropout) and :meth:`TransformerBackbone.encode`
(the blocks, no positions added again).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..config import Config
from .base import Backbone, Dropout, dropout, xavier_init_

__all__ = ["SASRec", "SASRecConfig", "TransformerBackbone", "attention_mask"]


class SASRecConfig(Config):
    """SASRec options (the width comes from the item encoder).

    Attributes
    ----------
    n_layers, n_heads : transformer depth and heads.
    dropout : embedding, attention and residual dropout.
    max_len : longest input sequence (positions table size).
    causal : causal mask (default on; ``false`` = LLM-ESR's no-mask variant).
    pre_ln : pre-LayerNorm blocks (+ final norm); ``false`` = post-LN (original Transformer). ``block:
        standard`` only.
    ffn_mult : feed-forward width as a multiple of the model width (SASRec: 1).
    activation : feed-forward activation.
    block : ``standard`` (ours) or ``sasrec`` (the SASRec code's block as in LLM-ESR, see the module docstring).
    positions : ``from-end`` (ours: trimming-invariant) or ``from-start`` (SASRec / LLM-ESR code: ``1..n``).
    mask_padding : mask padding keys in self-attention (ours); ``false`` = LLM-ESR's backbone, whose
        attention has no mask at all (padding rows are zero, but their keys/values still carry the projection
        biases); the backbone then encodes as if inputs were left-padded to ``max_len``, as LLM-ESR's batches
        are (one column stands for the missing padding positions, see the module docstring).
    """

    name: Literal["sasrec"] = "sasrec"
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(200, ge=1)
    causal: bool = True
    pre_ln: bool = True
    ffn_mult: int = Field(1, ge=1)
    activation: Literal["relu", "gelu"] = "relu"
    block: Literal["standard", "sasrec"] = "standard"
    positions: Literal["from-end", "from-start"] = "from-end"
    mask_padding: bool = True


def attention_mask(mask: Tensor, causal: bool) -> Tensor:
    """Boolean ``[B, 1, L, L]`` mask (True = may attend) from a ``[B, L]`` padding mask.

    Keys at padding positions are masked; with ``causal`` future keys too. The diagonal is always allowed so
    that no row is fully masked (padding rows would otherwise give NaN in softmax).
    """
    b, n = mask.shape
    allowed = mask[:, None, None, :].expand(b, 1, n, n)
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return allowed | eye


def attend(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, p: float = 0.0, pad_copies: int = 0
           ) -> Tensor:
    """``softmax(q k^T / sqrt(dh) + mask) v`` with dropout ``p`` on the attention weights.

    ``attn_mask`` is boolean (True = may attend) or additive. With ``pad_copies > 0`` key 0 stands for that many
    identical padding keys (``attn_mask`` adds ``log(pad_copies)`` to its logit, see
    :meth:`TransformerBackbone.encode`); under dropout its weight is scaled by ``K / pad_copies`` with ``K ~
    Binomial(pad_copies, 1 - p)``, the number of copies a per-copy dropout would keep. On CPU the dropout mask
    comes from ``rand_like`` (as :func:`~mmseqrec.models.base.dropout`; SDPA's CPU path uses the slow
    ``bernoulli_``).
    """
    if p <= 0.0 or (pad_copies == 0 and q.device.type != "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else att + attn_mask
    att = torch.softmax(att, -1)
    keep = (torch.rand_like(att) >= p).to(att.dtype)
    if pad_copies:
        n = torch.full_like(att[..., 0], float(pad_copies))
        keep[..., 0] = torch.binomial(n, torch.full_like(n, 1.0 - p)) / pad_copies
    return (att * keep * (1.0 / (1.0 - p))) @ v


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float, pre_ln: bool, ffn_mult: int,
                 activation: str) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"width {dim} is not divisible by n_heads={n_heads}")
        self.n_heads, self.dropout, self.pre_ln = n_heads, dropout, pre_ln
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, dim * ffn_mult)
        self.ff2 = nn.Linear(dim * ffn_mult, dim)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()

    def _attn(self, x: Tensor, attn_mask: Tensor | None, pad_copies: int = 0) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0, pad_copies)
        return self.out(y.transpose(1, 2).reshape(b, n, d))

    def _ffn(self, x: Tensor) -> Tensor:
        h = dropout(self.act(self.ff1(x)), self.dropout, self.training)
        return self.ff2(h)

    def forward(self, x: Tensor, attn_mask: Tensor | None, pad_copies: int = 0) -> Tensor:
        p, t = self.dropout, self.training
        if self.pre_ln:
            x = x + dropout(self._attn(self.norm1(x), attn_mask, pad_copies), p, t)
            return x + dropout(self._ffn(self.norm2(x)), p, t)
        x = self.norm1(x + dropout(self._attn(x, attn_mask, pad_copies), p, t))
        return self.norm2(x + dropout(self._ffn(x), p, t))


class _SASRecBlock(_Block):
    """The SASRec code's block (LLM-ESR ``SASRecBackbone`` / ``BertBackbone``): ``Q = LN1(x)``,
    ``x = Q + MHA(Q, x, x)`` (queries from the normalised input, keys and values from the raw one), ``x = LN2(x)``,
    ``x = x + FFN(x)``; LayerNorm eps 1e-8; dropout on the attention weights and inside the FFN only."""

    def __init__(self, dim: int, n_heads: int, dropout: float, ffn_mult: int, activation: str) -> None:
        super().__init__(dim, n_heads, dropout, False, ffn_mult, activation)
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)

    def _cross(self, q_in: Tensor, kv_in: Tensor, attn_mask: Tensor | None, pad_copies: int = 0) -> Tensor:
        b, n, d = q_in.shape
        h, dh = self.n_heads, d // self.n_heads
        w_q, w_kv = self.qkv.weight.split([d, 2 * d])
        b_q, b_kv = self.qkv.bias.split([d, 2 * d])
        q = F.linear(q_in, w_q, b_q).view(b, n, h, dh).transpose(1, 2)
        k, v = F.linear(kv_in, w_kv, b_kv).view(b, n, 2, h, dh).permute(2, 0, 3, 1, 4)
        y = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0, pad_copies)
        return self.out(y.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: Tensor, attn_mask: Tensor | None, pad_copies: int = 0) -> Tensor:
        q = self.norm1(x)
        x = self.norm2(q + self._cross(q, x, attn_mask, pad_copies))
        return x + dropout(self._ffn(x), self.dropout, self.training)


class TransformerBackbone(Backbone):
    """Shared transformer encoder of SASRec (causal by default) and BERT4Rec (bidirectional).

    Trimming-invariant (``trim_invariant``): masked padding keys, or unmasked ones counted up to ``max_len``.

    Parameters
    ----------
    dim : model width (= item encoder width).
    n_layers, n_heads, dropout, max_len, causal, pre_ln, ffn_mult, activation, block, positions, mask_padding :
        see :class:`SASRecConfig`.
    """

    def __init__(self, dim: int, n_layers: int = 2, n_heads: int = 1, dropout: float = 0.2, max_len: int = 200,
                 causal: bool = True, pre_ln: bool = True, ffn_mult: int = 1, activation: str = "relu",
                 block: str = "standard", positions: str = "from-end", mask_padding: bool = True) -> None:
        super().__init__()
        if block not in ("standard", "sasrec") or positions not in ("from-end", "from-start"):
            raise ValueError(f"unknown block {block!r} or positions {positions!r}")
        self.dim, self.causal, self.max_len, self.pre_ln = int(dim), bool(causal), int(max_len), bool(pre_ln)
        self.block, self.from_start, self.mask_padding = block, positions == "from-start", bool(mask_padding)
        self.trim_invariant = True
        # from-start numbers real items 1..n and gives padding 0 (one more row)
        self.positions = nn.Embedding(self.max_len + int(self.from_start), self.dim)
        self.dropout = Dropout(dropout)
        if block == "sasrec":
            self.blocks = nn.ModuleList(
                _SASRecBlock(self.dim, n_heads, dropout, ffn_mult, activation) for _ in range(n_layers))
            self.final_norm: nn.Module = nn.LayerNorm(self.dim, eps=1e-8)
            self.emb_norm: nn.Module = nn.Identity()
        else:
            self.blocks = nn.ModuleList(
                _Block(self.dim, n_heads, dropout, pre_ln, ffn_mult, activation) for _ in range(n_layers))
            self.final_norm = nn.LayerNorm(self.dim) if pre_ln else nn.Identity()
            self.emb_norm = nn.Identity() if pre_ln else nn.LayerNorm(self.dim)
        xavier_init_(self)  # LLM-ESR's init (positions included; biases and norms keep their defaults)

    def embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """Input side: ``x * sqrt(d) + positions``, dropout; zero at padding. ``[B, L, d]`` -> ``[B, L, d]``."""
        n = x.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={self.max_len}")
        if self.from_start:
            pos = self.positions(mask.long().cumsum(1) * mask.long())  # [B, L, d]: 1..n, 0 at padding
        else:
            pos = self.positions(torch.arange(self.max_len - n, self.max_len, device=x.device))
        keep = mask.unsqueeze(-1).to(x.dtype)
        h = self.emb_norm(x * math.sqrt(self.dim) + pos)
        return self.dropout(h) * keep

    def encode(self, h: Tensor, mask: Tensor) -> Tensor:
        """The blocks over embedded inputs ``h [B, L, d]`` (no positions added) -> states ``[B, L, d]``."""
        n = h.shape[1]
        copies = 0 if self.mask_padding else max(self.max_len - n, 0)
        if copies > 0:  # unmasked padding keys: one zero column stands for the max_len - n missing ones
            h = F.pad(h, (0, 0, 1, 0))
            mask = torch.cat([mask.new_zeros(mask.shape[0], 1), mask], 1)
        keep = mask.unsqueeze(-1).to(h.dtype)
        h = h * keep
        m = h.shape[1]
        if self.mask_padding:
            am: Tensor | None = attention_mask(mask, self.causal)
        elif copies > 0:  # additive: log(copies) on the padding column, -inf above the diagonal when causal
            am = torch.zeros(m, m, dtype=h.dtype, device=h.device)
            am[:, 0] = math.log(copies)
            if self.causal:
                am = am.masked_fill(~torch.ones(m, m, dtype=torch.bool, device=h.device).tril(), float("-inf"))
        else:
            am = torch.ones(m, m, dtype=torch.bool, device=h.device).tril() if self.causal else None
        for blk in self.blocks:
            h = blk(h, am, copies) * keep
        return (self.final_norm(h) * keep)[:, -n:]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, L, d]`` item vectors, ``mask [B, L]`` True at real items -> states ``[B, L, d]``."""
        return self.encode(self.embed(x, mask), mask)


class SASRec(TransformerBackbone):
    """SASRec backbone built from a :class:`SASRecConfig`."""

    def __init__(self, cfg: SASRecConfig, dim: int) -> None:
        super().__init__(dim, cfg.n_layers, cfg.n_heads, cfg.dropout, cfg.max_len, cfg.causal, cfg.pre_ln,
                         cfg.ffn_mult, cfg.activation, cfg.block, cfg.positions, cfg.mask_padding)
