"""One explicit table of models and item encoders: name -> config class + constructor. No auto-discovery.

* ``MODELS[name] = ModelSpec(config_cls, build_fn, extra_tokens)``: ``build_fn(cfg, dim) -> Backbone``;
  ``extra_tokens`` is the number of extra item rows the backbone needs (BERT4Rec's mask token: 1).
  General (user-item) models have ``general=True`` and ``build_fn(cfg, *, n_users, n_items, users, items,
  tensors) -> GeneralModel`` (``mmseqrec.models.graph``); ``mmseqrec.train.general`` trains them.
  Closed-form baselines (``pop``, ``itemknn``) are entries with ``closed_form=True``: ``build_fn(cfg, n_items)
  -> ClosedFormModel`` (no item encoder); the trainer fits them once instead of running epochs.
* ``ITEM_ENCODERS[name] = ItemEncoderSpec(config_cls, build_fn)``:
  ``build_fn(cfg, *, n_items, extra_tokens, tensors) -> ItemEncoder``. The config class exposes
  ``embeddings() -> list[str]`` naming the embedding stores it needs; ``tensors`` maps each of those names to
  its matrix (loaded by the train package from ``DIR/embed/NAME.safetensors``).

* ``REGULARIZERS[name] = RegularizerSpec(config_cls, build_fn)``: extra training losses such as LLM-ESR's
  self-distillation over similar users; ``build_fn(cfg, *, tensors, windows, n_users, n_items) -> nn.Module``
  where ``windows`` is the ``[n_users + 1, max_len + 1]`` left-padded matrix of training items (on the training
  device) and the module's ``forward(model, batch, user_states) -> {name: weighted loss}``. Listed in the
  experiment config as ``regularizers: [{name: ..., ...}]``.

Every config class has a ``name`` field (its registry key) and ``embeddings() -> list[str]`` where it needs
embedding stores. Add an entry here to make a new model available to ``mmseqrec train``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError
from .models.base import Backbone, ItemEncoder
from .models.baselines import ItemKNNConfig, PopConfig, build_itemknn, build_pop
from .models.bert4rec import BERT4Rec, BERT4RecConfig
from .models.dmesr import DmesrConfig, build_dmesr
from .models.graph import (
    BPRConfig,
    FreedomConfig,
    LightGCNConfig,
    MLLMRecConfig,
    MostPopConfig,
    VBPRConfig,
    build_bpr,
    build_freedom,
    build_lightgcn,
    build_mllmrec,
    build_mostpop,
    build_vbpr,
)
from .models.gru4rec import GRU4Rec, GRU4RecConfig
from .models.item_encoders import ContentEmbedding, ContentEmbeddingConfig, IdEmbedding, IdEmbeddingConfig
from .models.llmemb import LlmEmbConfig, build_llmemb
from .models.llmesr import (
    LlmEsrConfig,
    SelfDistillationConfig,
    build_llmesr,
    build_self_distillation,
)
from .models.sasrec import SASRec, SASRecConfig

__all__ = ["ITEM_ENCODERS", "MODELS", "ItemEncoderSpec", "ModelSpec", "item_encoder_spec", "model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    config_cls: type
    build: Callable[[Any, int], Backbone]
    extra_tokens: int = 0
    general: bool = False
    closed_form: bool = False


@dataclass(frozen=True)
class ItemEncoderSpec:
    config_cls: type
    build: Callable[..., ItemEncoder]


@dataclass(frozen=True)
class RegularizerSpec:
    config_cls: type
    build: Callable[..., torch.nn.Module]


def _build_id(cfg: IdEmbeddingConfig, *, n_items: int, extra_tokens: int,
              tensors: dict[str, torch.Tensor]) -> IdEmbedding:
    init = tensors[cfg.init].float() if cfg.init else None
    return IdEmbedding(n_items, cfg.dim, extra_tokens, init=init, freeze=cfg.freeze)


def _build_content(cfg: ContentEmbeddingConfig, *, n_items: int, extra_tokens: int,
                   tensors: dict[str, torch.Tensor]) -> ContentEmbedding:
    feats = tensors[cfg.embedding]
    if feats.shape[0] != n_items + 1:
        raise InputError(f"embedding {cfg.embedding!r} has {feats.shape[0]} rows, the dataset needs "
                         f"{n_items + 1} (n_items + 1)", field="item_encoder.embedding")
    return ContentEmbedding(feats.float(), cfg.dim, cfg.hidden, extra_tokens, cfg.activation, cfg.dropout)


MODELS: dict[str, ModelSpec] = {
    "sasrec": ModelSpec(SASRecConfig, SASRec),
    "bert4rec": ModelSpec(BERT4RecConfig, BERT4Rec, extra_tokens=1),
    "gru4rec": ModelSpec(GRU4RecConfig, GRU4Rec),
    # general (user-item) models, trained by train.general on a multi-target split (data.split)
    "bpr": ModelSpec(BPRConfig, build_bpr, general=True),
    "lightgcn": ModelSpec(LightGCNConfig, build_lightgcn, general=True),
    "vbpr": ModelSpec(VBPRConfig, build_vbpr, general=True),
    "freedom": ModelSpec(FreedomConfig, build_freedom, general=True),
    "mllmrec": ModelSpec(MLLMRecConfig, build_mllmrec, general=True),
    "mostpop": ModelSpec(MostPopConfig, build_mostpop, general=True),  # Pop on a general split
    "pop": ModelSpec(PopConfig, build_pop, closed_form=True),
    "itemknn": ModelSpec(ItemKNNConfig, build_itemknn, closed_form=True),
}

ITEM_ENCODERS: dict[str, ItemEncoderSpec] = {
    "id": ItemEncoderSpec(IdEmbeddingConfig, _build_id),
    "content": ItemEncoderSpec(ContentEmbeddingConfig, _build_content),
    "dmesr": ItemEncoderSpec(DmesrConfig, build_dmesr),
    "llmesr": ItemEncoderSpec(LlmEsrConfig, build_llmesr),
    "llmemb": ItemEncoderSpec(LlmEmbConfig, build_llmemb),
}

REGULARIZERS: dict[str, RegularizerSpec] = {
    "self-distill": RegularizerSpec(SelfDistillationConfig, build_self_distillation),
}


def _lookup(table: dict[str, Any], name: str, what: str, field: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise InputError(f"unknown {what} {name!r}; choose one of: {', '.join(sorted(table))}",
                         field=field) from None


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` named ``name`` (``InputError`` listing the names otherwise)."""
    return _lookup(MODELS, name, "model", "model.name")


def item_encoder_spec(name: str) -> ItemEncoderSpec:
    """The :class:`ItemEncoderSpec` named ``name`` (``InputError`` listing the names otherwise)."""
    return _lookup(ITEM_ENCODERS, name, "item encoder", "item_encoder.name")


def regularizer_spec(name: str) -> RegularizerSpec:
    """The :class:`RegularizerSpec` named ``name`` (``InputError`` listing the names otherwise)."""
    return _lookup(REGULARIZERS, name, "regularizer", "regularizers.name")
