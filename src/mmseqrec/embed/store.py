"""Embedding store: a matrix aligned to the item (or user) vocabulary, row 0 = padding.

Files under the dataset dir::

    DIR/embed/NAME.safetensors   "embedding" float16 [N + 1, D]; optional "tokens" float16 [N + 1, T, D]
                                 and "lengths" int32 [N + 1] for token-level features
    DIR/embed/NAME.json          encoder, dim, pooling, normalisation, source, input hash, ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path, atomic_write_json

__all__ = ["EmbeddingStore", "embed_dir", "list_embeddings", "load_embedding", "save_embedding"]


def embed_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "embed"


@dataclass
class EmbeddingStore:
    matrix: np.ndarray  # [N + 1, D]
    meta: dict[str, Any]
    tokens: np.ndarray | None = None  # [N + 1, T, D]
    lengths: np.ndarray | None = None  # [N + 1]

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def save_embedding(data_dir: str | Path, name: str, matrix: np.ndarray, meta: dict[str, Any],
                   tokens: np.ndarray | None = None, lengths: np.ndarray | None = None) -> Path:
    """Write NAME.safetensors (float16) and NAME.json atomically. Returns the safetensors path."""
    from safetensors.numpy import save_file

    if matrix.ndim != 2:
        raise ValueError(f"embedding matrix must be 2-D, got shape {matrix.shape}")
    tensors = {"embedding": np.ascontiguousarray(matrix, dtype=np.float16)}
    if tokens is not None:
        if lengths is None or tokens.shape[0] != matrix.shape[0]:
            raise ValueError("token features need lengths and the same number of rows as the matrix")
        tensors["tokens"] = np.ascontiguousarray(tokens, dtype=np.float16)
        tensors["lengths"] = np.ascontiguousarray(lengths, dtype=np.int32)
    out = embed_dir(data_dir) / f"{name}.safetensors"
    meta = {**meta, "name": name, "rows": int(matrix.shape[0]), "dim": int(matrix.shape[1]),
            "dtype": "float16", "has_tokens": tokens is not None}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(out.with_suffix(".json"), meta)
    return out


def load_embedding(data_dir: str | Path, name: str) -> EmbeddingStore:
    from safetensors.numpy import load_file

    path = embed_dir(data_dir) / f"{name}.safetensors"
    if not path.exists():
        have = ", ".join(list_embeddings(data_dir)) or "none"
        raise InputError(f"no embedding named {name!r} (available: {have}); run `mmseqrec embed` first",
                         file=path)
    t = load_file(str(path))
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text()) if side.exists() else {}
    return EmbeddingStore(matrix=t["embedding"], meta=meta, tokens=t.get("tokens"), lengths=t.get("lengths"))


def list_embeddings(data_dir: str | Path) -> list[str]:
    d = embed_dir(data_dir)
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.exists() else []
