"""GRU4Rec backbone (Hidasi et al., 2016) as in LLM-ESR: ``nn.GRU(d, d, n_layers, bias=False)``.

Without biases a zero input keeps a zero state, so left padding leaves the state at exactly zero until the
first real item; no packing is needed. No positional embeddings. LLM-ESR's GRU4Rec has no dropout at all
(``dropout: 0``, as in ``configs/presets/llmesr-gru4rec.yaml``); ours defaults to 0.2 on the input vectors
(:meth:`GRU4Rec.embed`) and on the output states.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from ..config import Config
from .base import Backbone, Dropout, xavier_init_

__all__ = ["GRU4Rec", "GRU4RecConfig"]


class GRU4RecConfig(Config):
    """GRU4Rec options (the width comes from the item encoder).

    Attributes
    ----------
    n_layers : GRU layers.
    dropout : dropout on the input vectors and the output states (LLM-ESR: none, ``0``).
    max_len : longest input sequence (inputs are truncated to it by the trainer).
    bias : GRU biases (off as in LLM-ESR; without them zero padding inputs keep the state at zero).
    """

    name: Literal["gru4rec"] = "gru4rec"
    n_layers: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(200, ge=1)
    bias: bool = False


class GRU4Rec(Backbone):
    """GRU over left-padded item vectors; causal by construction."""

    def __init__(self, cfg: GRU4RecConfig, dim: int) -> None:
        super().__init__()
        self.dim, self.causal, self.max_len = int(dim), True, int(cfg.max_len)
        self.trim_invariant = not cfg.bias  # zero inputs keep a zero state only without biases
        self.drop = Dropout(cfg.dropout)
        self.gru = nn.GRU(self.dim, self.dim, cfg.n_layers, bias=cfg.bias, batch_first=True)
        xavier_init_(self)  # LLM-ESR's init

    def embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """Input dropout, zero at padding (LLM-ESR: identity)."""
        return self.drop(x) * mask.unsqueeze(-1).to(x.dtype)

    def encode(self, h: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(h.dtype)
        out, _ = self.gru(h * keep)
        return self.drop(out) * keep

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.encode(self.embed(x, mask), mask)
