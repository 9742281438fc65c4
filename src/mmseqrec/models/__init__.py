"""Model layer (pure torch, no I/O): item encoders, backbones, objectives and the sequence model."""

from .base import Backbone, ItemEncoder
from .baselines import ClosedFormModel, ItemKNN, ItemKNNConfig, Pop, PopConfig
from .bert4rec import BERT4Rec, BERT4RecConfig, cloze, cloze_batch
from .gru4rec import GRU4Rec, GRU4RecConfig
from .item_encoders import ContentEmbedding, ContentEmbeddingConfig, IdEmbedding, IdEmbeddingConfig
from .losses import ObjectiveConfig, gbce_beta, next_item_loss
from .sasrec import SASRec, SASRecConfig, TransformerBackbone
from .sequence import Batch, SequenceModel

__all__ = [
    "BERT4Rec",
    "BERT4RecConfig",
    "Backbone",
    "Batch",
    "ClosedFormModel",
    "ContentEmbedding",
    "ContentEmbeddingConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "IdEmbedding",
    "IdEmbeddingConfig",
    "ItemEncoder",
    "ItemKNN",
    "ItemKNNConfig",
    "ObjectiveConfig",
    "Pop",
    "PopConfig",
    "SASRec",
    "SASRecConfig",
    "SequenceModel",
    "TransformerBackbone",
    "cloze",
    "cloze_batch",
    "gbce_beta",
    "next_item_loss",
]
