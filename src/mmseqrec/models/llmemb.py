"""LLMEmb (Liu et al., "Large Language Model Empowered Embedding Generator for Sequential Recommendation"),
pure torch, no I/O.

Stage 2, recommendation-adaptation training (RAT), is the item encoder :class:`LlmEmbEncoder` (registry name
``llmemb``): the frozen stage-1 LLM item embedding goes through the two-linear adapter and is the only item view;
with a collaborative store (the item table of a trained SASRec, ``mmseqrec embed DATA --source run:RUN``) the
soft contrastive alignment ``alpha * Contrastive_Loss2(tau)(srs_embs, llm_embs)`` is added over the batch's
*target* items, positions with duplicates, as ``models/LLMEmb.py`` does (:meth:`LlmEmbEncoder.target_losses`).

Stage 1, supervised contrastive fine-tuning (SCFT), trains the LLM itself; its torch parts live here
(:func:`attribute_dropout_views`, :class:`LearnableTemperature`, :func:`scft_loss`) and the training loop with
peft / transformers in :mod:`mmseqrec.embed.llmemb`.

Sources of every choice: ``docs/methods/llmemb.md``.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..config import Config
from ..errors import InputError
from .alignment import Adapter, soft_contrastive
from .base import ItemEncoder
from .llmesr import _check_rows  # the same [N + 1, D] store check as LLM-ESR

__all__ = [
    "LearnableTemperature",
    "LlmEmbConfig",
    "LlmEmbEncoder",
    "attribute_dropout_views",
    "build_llmemb",
    "scft_loss",
    "target_items",
]


# ---------------------------------------------------------------------------------------------------- stage 1
def attribute_dropout_views(text: str, ratio: float, rng: random.Random) -> tuple[str, str]:
    """Two views of one item prompt with attributes dropped (LLMEmb ``llm/data_processor/llama.py``).

    The prompt is ``"<instruction>\\n<attr 1>;<attr 2>;..."``. Each view shuffles the attribute list
    independently and keeps the first ``n - int(n * ratio)`` of them, joined by ``";"`` after the instruction
    line. A prompt with one attribute (or none), or a ratio that drops them all, gives the instruction line
    alone in both views, as in the code.

    Parameters
    ----------
    text : the item prompt (first line: instruction; second line: ``;``-separated attributes).
    ratio : fraction of attributes dropped per view (LLMEmb scripts: 0.4).
    rng : random source (two shuffles per call).
    """
    instruction, _, rest = text.partition("\n")
    feats = rest.split("\n")[0].split(";")
    a, b = list(feats), list(feats)
    rng.shuffle(a)
    rng.shuffle(b)
    keep = len(feats) - int(len(feats) * ratio)
    if len(feats) <= 1 or keep == 0:
        return instruction, instruction
    return instruction + "\n" + ";".join(a[:keep]), instruction + "\n" + ";".join(b[:keep])


class LearnableTemperature(nn.Module):
    """A trainable scalar temperature (LLMEmb ``LlamaRSEmb.tau = nn.Parameter([3.0])``)."""

    def __init__(self, init: float = 3.0) -> None:
        super().__init__()
        self.tau = nn.Parameter(torch.tensor([float(init)]))

    def forward(self) -> Tensor:
        return self.tau


def scft_loss(chosen: Tensor, rejected: Tensor, tau: Tensor | float) -> Tensor:
    """SCFT loss between the pooled embeddings of the two views (``[B, H]`` each): the same soft contrastive
    form as stage 2 (``llm/llama.py`` ``Contrastive_Loss``), with the learnable temperature."""
    return soft_contrastive(chosen, rejected, tau)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- stage 2
def target_items(targets: Tensor, n_items: int, max_items: int | None = None) -> Tensor:
    """The real target ids of a batch in row-major order, duplicates kept (LLMEmb: ``pos[pos != 0]``),
    optionally a random subset of ``max_items`` positions."""
    flat = targets.reshape(-1)
    t = flat[(flat > 0) & (flat <= n_items)]
    if max_items is not None and t.numel() > max_items:
        t = t[torch.randperm(t.numel(), device=t.device)[:max_items]]
    return t


class LlmEmbConfig(Config):
    """LLMEmb's RAT stage: frozen LLM embedding + adapter (code: ``models/Adapter.py``, ``models/LLMEmb.py``).

    Attributes
    ----------
    embedding : store of the stage-1 LLM item embedding (SCFT-tuned LLM, pooled, PCA-reduced).
    dim : model width (LLMEmb scripts: ``--hidden_size 128``).
    hidden, adapter_activation, dropout : adapter options (LLMEmb: ``D -> D/2 -> d``, no activation).
    collab : store of frozen collaborative item embeddings ``[N + 1, dim]`` (LLMEmb: ``itm_emb_sasrec.pkl``,
        the item table of a trained SASRec; ``mmseqrec embed DATA --source run:RUN``); enables alignment.
    alpha : weight of the alignment (LLMEmb scripts: 0.01).
    tau : its temperature (LLMEmb scripts: 2).
    align_max_positions : cap on the target positions contrasted per step (``None`` = all of them, as the
        code; the cost is ``O(n^2)`` in the number of positions, e.g. 128 users x 200 positions).
    """

    name: Literal["llmemb"] = "llmemb"
    embedding: str = "text"
    dim: int = Field(128, ge=1)
    hidden: int | None = Field(None, ge=1)
    adapter_activation: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    collab: str | None = None
    alpha: float = Field(0.01, ge=0)
    tau: float = Field(2.0, gt=0)
    align_max_positions: int | None = Field(None, ge=2)

    def embeddings(self) -> list[str]:
        """Embedding stores this encoder needs (read by the train package)."""
        return [self.embedding] + ([self.collab] if self.collab else [])


class LlmEmbEncoder(ItemEncoder):
    """``adapter(frozen LLM embedding)`` as the only view (``V = 1``) + optional collaborative alignment.

    Parameters
    ----------
    cfg : the options.
    features : ``[n_items + 1, D]`` frozen LLM embedding (non-persistent buffer).
    extra_tokens : learned rows after the items (BERT4Rec's mask token).
    collab : optional ``[n_items + 1, dim]`` frozen collaborative embeddings (non-persistent buffer).
    """

    def __init__(self, cfg: LlmEmbConfig, features: Tensor, extra_tokens: int = 0,
                 collab: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_items, self.dim, self.n_views = int(features.shape[0] - 1), int(cfg.dim), 1
        self.extra_tokens = int(extra_tokens)
        self.register_buffer("features", features.detach().float().clone(), persistent=False)
        self.adapter = Adapter(features.shape[1], self.dim, cfg.hidden, cfg.adapter_activation, cfg.dropout)
        if collab is not None and tuple(collab.shape) != (self.n_items + 1, self.dim):
            raise InputError(f"collaborative embedding must be [{self.n_items + 1}, {self.dim}] (dim = "
                             f"item_encoder.dim), got {tuple(collab.shape)}", field="item_encoder.collab")
        self.register_buffer("collab", None if collab is None else collab.detach().float().clone(),
                             persistent=False)
        self.extra = nn.Parameter(torch.randn(1, self.extra_tokens, self.dim) * self.dim ** -0.5)

    def table(self) -> Tensor:
        t = self.adapter(self.features)
        keep = torch.ones(t.shape[0], 1, device=t.device, dtype=t.dtype)
        keep[0] = 0
        return torch.cat([(t * keep).unsqueeze(0), self.extra.to(t.dtype)], 1)

    def target_losses(self, targets: Tensor, table: Tensor | None = None) -> dict[str, Tensor]:
        """``alpha * soft_contrastive(collab[t], adapter(llm)[t], tau)`` over the target positions ``t``.

        The argument order is LLMEmb's ``align_loss_func(srs_embs, llm_embs)``: the loss is not symmetric.
        """
        if self.collab is None or self.cfg.alpha <= 0:
            return {}
        items = target_items(targets, self.n_items, self.cfg.align_max_positions)
        if items.numel() < 2:
            return {"align": torch.zeros((), device=targets.device)}
        t = self.table() if table is None else table
        return {"align": self.cfg.alpha * soft_contrastive(self.collab[items], t[0, items], self.cfg.tau)}


def build_llmemb(cfg: LlmEmbConfig, *, n_items: int, extra_tokens: int,
                 tensors: dict[str, Tensor]) -> LlmEmbEncoder:
    """Registry constructor."""
    for name, field in ((cfg.embedding, "embedding"), (cfg.collab, "collab")):
        if name is not None and name not in tensors:
            raise InputError(f"embedding store {name!r} was not loaded", field=f"item_encoder.{field}")
    feats = _check_rows(tensors[cfg.embedding], n_items, "item_encoder.embedding")
    collab = _check_rows(tensors[cfg.collab], n_items, "item_encoder.collab") if cfg.collab else None
    return LlmEmbEncoder(cfg, feats, extra_tokens, collab)
