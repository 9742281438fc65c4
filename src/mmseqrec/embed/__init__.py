"""mmseqrec.embed: text and image encoders, the ``embed`` stage and the embedding store.

Heavy dependencies (torch, transformers, sentence-transformers, PIL) are imported lazily: importing this package
is cheap, and :mod:`mmseqrec.embed.store` stays usable without them.
"""

from .store import EmbeddingStore, embed_dir, list_embeddings, load_embedding, save_embedding

__all__ = [
    "EmbedConfig",
    "EmbeddingStore",
    "embed_dir",
    "list_embeddings",
    "load_embedding",
    "load_encoder",
    "run_embed",
    "save_embedding",
]


def __getattr__(name: str):
    if name in ("EmbedConfig", "run_embed"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "load_encoder":
        from .encoders import load_encoder

        return load_encoder
    raise AttributeError(name)
