"""Cross-attention fusion of two item views (pure torch, no I/O).

* :class:`CrossAttention`: multi-head cross-attention with a key-padding mask, an optional causal mask, and
  configurable biases / residual / layer norm. With ``qkv_bias=False, out_bias=True, residual=False,
  layernorm=False`` it is LLM-ESR's ``Multi_CrossAttention`` (bias-free Q/K/V, output linear with bias,
  scaled dot product, key-padding mask only).
* :class:`ItemFusion`: DMESR's item-level *bidirectional* cross-attention (reconstruction): the MLLM view of
  an item queries the item's original-text token features, and the original text queries the item's MLLM
  view tokens (image / text / both prompt views); the two outputs are the "two fused representations".
* :class:`SequenceFusion`: LLM-ESR's sequence-level interaction: queries, keys and values are the user's item
  sequence in each view (``CA(q=a, kv=b)`` and ``CA(q=b, kv=a)``).

Masks are boolean and ``True`` at real (non-padding) positions. A query with no allowed key (a padding query
under the causal mask, an item without text tokens) receives no attention contribution: its attention output
is zero (then the output projection bias, the residual and the norm apply), never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossAttention", "ItemFusion", "SequenceFusion"]


class CrossAttention(nn.Module):
    """Multi-head cross-attention ``query [..., Lq, d]`` over ``kv [..., Lk, d]``.

    Parameters
    ----------
    dim : model width ``d`` (divisible by ``heads``).
    heads : attention heads.
    qkv_bias : biases on the Q/K/V projections (LLM-ESR: none).
    out_bias : bias on the output projection (LLM-ESR: yes).
    residual : add the query to the output (LLM-ESR: no, ``1 * cross + 0 * orig``).
    layernorm : LayerNorm on the output (after the residual).
    dropout : dropout on the attention weights and on the projected output.
    norm_gain : initial gain of the LayerNorm. ``1`` (PyTorch's default) gives outputs of norm ``sqrt(dim)``;
        ``dim ** -0.5`` gives norm 1, the scale of an embedding table that the backbones' ``x * sqrt(d) +
        position`` input expects (with gain 1 the positions are drowned and BERT4Rec cannot tell the mask
        token's position).
    """

    def __init__(self, dim: int, heads: int = 2, qkv_bias: bool = False, out_bias: bool = True,
                 residual: bool = False, layernorm: bool = False, dropout: float = 0.0,
                 norm_gain: float = 1.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads={heads}")
        self.dim, self.heads, self.dropout = int(dim), int(heads), float(dropout)
        self.residual = bool(residual)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim, bias=out_bias)
        self.norm: nn.Module = nn.LayerNorm(dim) if layernorm else nn.Identity()
        if layernorm:
            nn.init.constant_(self.norm.weight, float(norm_gain))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for lin in (self.q, self.k, self.v, self.out):
            nn.init.xavier_normal_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, kv: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """Attend from ``query [..., Lq, d]`` to ``kv [..., Lk, d]``.

        Parameters
        ----------
        query, kv : same leading dims.
        key_mask : ``[..., Lk]`` boolean, ``True`` where a key may be attended (``None``: all).
        causal : query position ``t`` only sees key positions ``<= t`` (needs aligned positions, i.e. ``Lq == Lk``
            left-padded sequences).

        Returns
        -------
        Tensor
            ``[..., Lq, d]``.
        """
        lead = query.shape[:-2]
        lq, lk, d = query.shape[-2], kv.shape[-2], self.dim
        q2 = query.reshape(-1, lq, d)
        k2 = kv.reshape(-1, lk, d)
        b, h, dh = q2.shape[0], self.heads, d // self.heads
        q = self.q(q2).view(b, lq, h, dh).transpose(1, 2)
        k = self.k(k2).view(b, lk, h, dh).transpose(1, 2)
        v = self.v(k2).view(b, lk, h, dh).transpose(1, 2)
        allowed = torch.ones(b, 1, lq, lk, dtype=torch.bool, device=query.device)
        if key_mask is not None:
            allowed = allowed & key_mask.reshape(b, 1, 1, lk).bool()
        if causal:
            if lq != lk:
                raise ValueError("causal cross-attention needs aligned query and key positions (Lq == Lk)")
            allowed = allowed & torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril()
        has_key = allowed.any(-1, keepdim=True)  # [b, 1, lq, 1]
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed | ~has_key, dropout_p=self.dropout if self.training else 0.0)
        attn = attn * has_key.to(attn.dtype)  # queries without any allowed key get no contribution
        out = self.drop(self.out(attn.transpose(1, 2).reshape(b, lq, d)))
        if self.residual:
            out = out + q2
        return self.norm(out).reshape(*lead, lq, d)


class ItemFusion(nn.Module):
    """DMESR item-level bidirectional cross-attention (reconstruction; computed once per item per step).

    ``f_m = CA_m(query = m_i, kv = text tokens of item i)`` and ``f_t = CA_t(query = t_i, kv = MLLM view
    tokens of item i)``. Each query is a single vector per item, so the cost is ``O(N * T * d)``.

    Parameters
    ----------
    dim, heads, residual, layernorm, dropout, qkv_bias, norm_gain : see :class:`CrossAttention`.
    """

    def __init__(self, dim: int, heads: int = 2, residual: bool = True, layernorm: bool = True,
                 dropout: float = 0.0, qkv_bias: bool = False, norm_gain: float = 1.0) -> None:
        super().__init__()
        kw = {"heads": heads, "qkv_bias": qkv_bias, "out_bias": True, "residual": residual,
              "layernorm": layernorm, "dropout": dropout, "norm_gain": norm_gain}
        self.mllm_to_text = CrossAttention(dim, **kw)
        self.text_to_mllm = CrossAttention(dim, **kw)

    def forward(self, m: Tensor, text_tokens: Tensor, text_mask: Tensor | None, t: Tensor,
                mllm_tokens: Tensor, mllm_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Fuse.

        Parameters
        ----------
        m : ``[N, d]`` coarse MLLM view of each item.
        text_tokens : ``[N, T, d]`` fine-grained text features (``T = 1`` when only a pooled text vector exists).
        text_mask : ``[N, T]`` real tokens (``None``: all).
        t : ``[N, d]`` pooled original-text view.
        mllm_tokens : ``[N, K, d]`` the aligned MLLM prompt views of each item as ``K`` tokens.
        mllm_mask : ``[N, K]`` (``None``: all).

        Returns
        -------
        tuple of Tensor
            ``(f_m, f_t)``, each ``[N, d]``.
        """
        f_m = self.mllm_to_text(m.unsqueeze(1), text_tokens, text_mask).squeeze(1)
        f_t = self.text_to_mllm(t.unsqueeze(1), mllm_tokens, mllm_mask).squeeze(1)
        return f_m, f_t


class SequenceFusion(nn.Module):
    """LLM-ESR's sequence-level bidirectional cross-attention between two views of the same item sequence.

    Returns ``(CA_ab(q=a, kv=b), CA_ba(q=b, kv=a))``; in LLM-ESR ``a`` is the semantic (LLM) sequence and ``b``
    the collaborative (ID) sequence, and ``CA_ab`` (``llm2id``) gives the new collaborative sequence while
    ``CA_ba`` (``id2llm``) gives the new semantic one. Outputs at padding positions are zero.

    Parameters
    ----------
    dim, heads, residual, layernorm, dropout, norm_gain : see :class:`CrossAttention` (biases as LLM-ESR).
    causal : add a causal mask (LLM-ESR: none, only key padding).
    """

    def __init__(self, dim: int, heads: int = 2, residual: bool = False, layernorm: bool = False,
                 dropout: float = 0.0, causal: bool = True, norm_gain: float = 1.0) -> None:
        super().__init__()
        kw = {"heads": heads, "qkv_bias": False, "out_bias": True, "residual": residual,
              "layernorm": layernorm, "dropout": dropout, "norm_gain": norm_gain}
        self.causal = bool(causal)
        self.ab = CrossAttention(dim, **kw)
        self.ba = CrossAttention(dim, **kw)

    def forward(self, a: Tensor, b: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``a, b [B, L, d]``, ``mask [B, L]`` (True = real item) -> two ``[B, L, d]`` sequences."""
        keep = mask.unsqueeze(-1).to(a.dtype)
        out_a = self.ab(a, b, mask, self.causal) * keep
        out_b = self.ba(b, a, mask, self.causal) * keep
        return out_a, out_b
