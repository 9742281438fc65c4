"""Item encoders with one view: a learned ID table and a frozen content matrix with an adapter.

Both implement :class:`~mmseqrec.models.base.ItemEncoder` (``V = 1``). Neither does I/O: an initial matrix
or frozen features are passed in as tensors (the ``train`` package reads them from embedding stores).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from ..config import Config
from .base import ItemEncoder

__all__ = ["ContentEmbedding", "ContentEmbeddingConfig", "IdEmbedding", "IdEmbeddingConfig"]


class IdEmbeddingConfig(Config):
    """Options of the learned ID table.

    Attributes
    ----------
    dim : width of the item vectors (the backbone width follows it).
    init : optional embedding store name whose matrix initialises the table (e.g. a PCA of a semantic view,
        already reduced to ``dim`` columns); ``None`` = xavier-normal init.
    freeze : keep the table fixed (only sensible with ``init``).
    """

    name: str = "id"
    dim: int = Field(64, ge=1)
    init: str | None = None
    freeze: bool = False

    def embeddings(self) -> list[str]:
        """Embedding stores this encoder needs (read by the train package)."""
        return [self.init] if self.init else []


class IdEmbedding(ItemEncoder):
    """A learned table ``[n_items + 1 + extra_tokens, dim]``; row 0 (padding) stays zero.

    Parameters
    ----------
    n_items : number of real items (ids 1..n_items).
    dim : vector width.
    extra_tokens : extra learned rows after the items (BERT4Rec's mask token is ``n_items + 1``).
    init : optional ``[n_items + 1, dim]`` initial matrix (row 0 ignored).
    freeze : do not train the item rows (extra tokens stay trainable).
    """

    def __init__(self, n_items: int, dim: int = 64, extra_tokens: int = 0, init: Tensor | None = None,
                 freeze: bool = False) -> None:
        super().__init__()
        self.n_items, self.dim, self.n_views, self.extra_tokens = int(n_items), int(dim), 1, int(extra_tokens)
        self.embedding = nn.Embedding(self.n_items + 1 + self.extra_tokens, self.dim, padding_idx=0)
        nn.init.xavier_normal_(self.embedding.weight)
        with torch.no_grad():
            if init is not None:
                if tuple(init.shape) != (self.n_items + 1, self.dim):
                    raise ValueError(f"init matrix must be [{self.n_items + 1}, {self.dim}], got {tuple(init.shape)}")
                self.embedding.weight[: self.n_items + 1] = init.to(self.embedding.weight.dtype)
            self.embedding.weight[0].zero_()
        if freeze:
            # Items frozen, extra tokens learned: split into a frozen buffer and a small parameter.
            self.embedding.weight.requires_grad_(False)
            self.extra = nn.Parameter(self.embedding.weight[self.n_items + 1:].clone().requires_grad_(True))
        else:
            self.extra = None

    def table(self) -> Tensor:
        w = self.embedding.weight
        if self.extra is not None:
            w = torch.cat([w[: self.n_items + 1], self.extra], 0)
        return w.unsqueeze(0)

    def encode(self, ids: Tensor, table: Tensor | None = None) -> Tensor:
        if table is None and self.extra is None:
            return self.embedding(ids).unsqueeze(0)
        return super().encode(ids, table)


class ContentEmbeddingConfig(Config):
    """Frozen content matrix + LLM-ESR adapter (``Linear(D, D/2) -> Linear(D/2, dim)``, no activation).

    Attributes
    ----------
    embedding : name of the embedding store (``DIR/embed/NAME.safetensors``).
    dim : output width.
    hidden : adapter hidden width (default ``D // 2``).
    activation : put a ReLU between the two linears (LLM-ESR has none).
    dropout : dropout on the adapter output.
    """

    name: str = "content"
    embedding: str
    dim: int = Field(64, ge=1)
    hidden: int | None = Field(None, ge=1)
    activation: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)

    def embeddings(self) -> list[str]:
        return [self.embedding]


class ContentEmbedding(ItemEncoder):
    """Item vectors ``adapter(frozen_matrix[item])``, computed for all items once per :meth:`table` call.

    Parameters
    ----------
    features : ``[n_items + 1, D]`` frozen matrix (row 0 = padding, ignored).
    dim : output width.
    hidden : adapter hidden width (default ``D // 2``).
    extra_tokens : learned rows appended after the items (BERT4Rec's mask token).
    activation, dropout : see :class:`ContentEmbeddingConfig`.
    """

    def __init__(self, features: Tensor, dim: int = 64, hidden: int | None = None, extra_tokens: int = 0,
                 activation: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if features.dim() != 2:
            raise ValueError(f"features must be [n_items + 1, D], got {tuple(features.shape)}")
        self.n_items, self.dim, self.n_views = int(features.shape[0] - 1), int(dim), 1
        self.extra_tokens = int(extra_tokens)
        d_in = int(features.shape[1])
        hidden = hidden or max(d_in // 2, 1)
        self.register_buffer("features", features.detach().float().clone())
        layers: list[nn.Module] = [nn.Linear(d_in, hidden)]
        if activation:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(hidden, self.dim))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.adapter = nn.Sequential(*layers)
        self.extra = nn.Parameter(torch.randn(self.extra_tokens, self.dim) * self.dim ** -0.5)

    def table(self) -> Tensor:
        out = self.adapter(self.features)
        keep = torch.ones(out.shape[0], 1, device=out.device, dtype=out.dtype)
        keep[0] = 0.0  # padding row is zero
        return torch.cat([out * keep, self.extra.to(out.dtype)], 0).unsqueeze(0)
