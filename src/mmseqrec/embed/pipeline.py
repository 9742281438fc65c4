"""The ``embed`` stage: encode one source of a prepared dataset into an embedding store.

``run_embed(DATA, EmbedConfig(...))`` reads the inputs (:mod:`mmseqrec.embed.sources`), encodes them in
batches (texts sorted by length to reduce padding, ``torch.inference_mode``), optionally reduces them with PCA
and L2-normalises them, and writes ``DATA/embed/NAME.safetensors`` + ``NAME.json``
(:mod:`mmseqrec.embed.store`). Row 0 is padding; items with no usable input get a zero row and are listed in
the metadata (``n_missing``, ``missing_items`` capped at :data:`MISSING_LIST_CAP`, ``missing_reasons``).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, field_validator

from .. import __version__
from ..config import Config
from ..data.dataset import DatasetDir
from ..errors import InputError
from .encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, Encoder, load_encoder
from .llmemb import ScftConfig
from .runs import is_run_source, run_item_table
from .sources import hash_texts, image_refs, is_image_source, load_image, text_inputs
from .store import embed_dir, save_embedding

__all__ = [
    "MISSING_LIST_CAP",
    "EmbedConfig",
    "EmbedResult",
    "default_name",
    "l2_normalize",
    "pca_fit",
    "run_embed",
    "store_path",
]

MISSING_LIST_CAP = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class EmbedConfig(Config):
    """Options of ``mmseqrec embed``."""

    source: str = Field("title", description="title | text | attributes | image | TASK | TASK:VIEW | run:RUN_DIR")
    encoder: str = Field("auto", description="auto: all-MiniLM-L6-v2 for text, efficientnet-lite0 for images")
    out: str | None = Field(None, description="store name under DATA/embed/ (default: SOURCE-ENCODER)")
    tokens: bool = Field(False, description="also store token-level last hidden states + lengths")
    max_tokens: int = Field(32, ge=1, le=4096)
    max_length: int | None = Field(None, ge=1, description="tokenizer truncation (default: the model's)")
    pooling: Literal["mean", "last", "cls"] | None = None
    normalize: bool | None = Field(None, description="L2-normalise; default: yes for text and image encoders, "
                                   "no for run: sources and llmemb: encoders (kept as their references)")
    pca: int | None = Field(None, ge=1, description="PCA components (default: none; 1536 for llmemb:, as LLMEmb)")
    batch_size: int | None = Field(None, ge=1, description="default: 64 for text, 16 for images on CPU "
                                   "(larger batches thrash the CPU caches), 256 on CUDA")
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    image_fit: Literal["pad", "crop"] = "pad"
    workers: int = Field(4, ge=1, description="threads decoding images")
    progress: bool = True
    scft: ScftConfig = ScftConfig()

    @field_validator("out")
    @classmethod
    def _check_out(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError("store name may only contain letters, digits, '_', '.', '-'")
        return v


@dataclass
class EmbedResult:
    path: Path
    meta: dict[str, Any]
    matrix: np.ndarray  # float32 [N + 1, D] before the float16 cast of the store


def default_name(source: str, encoder: str) -> str:
    enc = encoder.rstrip("/").split("/")[-1].split(":")[-1] or "encoder"
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", f"{source.replace(':', '.')}-{enc}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; zero rows stay zero."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def pca_fit(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA by eigen-decomposition of the covariance (numpy only, O(N D^2)).

    Returns ``(mean [D], components [D, k], explained_variance_ratio [k])`` with a deterministic sign
    (the largest-magnitude loading of each component is positive).
    """
    if x.shape[0] < 2:
        raise InputError("PCA needs at least 2 items with inputs", field="--pca")
    k = min(n_components, x.shape[1])
    xd = x.astype(np.float64)
    mean = xd.mean(axis=0)
    xc = xd - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:k]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    flip = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(k)])
    vecs = vecs * np.where(flip == 0, 1, flip)
    total = float(np.clip(np.linalg.eigvalsh(cov), 0, None).sum()) or 1.0
    return mean, vecs, vals / total


class _Progress:
    """A rich progress bar with items/s and ETA (or a no-op)."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.bar = None
        if enabled:
            from rich.progress import TaskProgressColumn

            from ..progress import progress_bar

            self.bar = progress_bar(TaskProgressColumn(), "{task.fields[rate]}")
            self.task = self.bar.add_task(description, total=total, rate="")
            self.t0 = time.perf_counter()
            self.done = 0

    def __enter__(self) -> Self:
        if self.bar is not None:
            self.bar.start()
        return self

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.done += n
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:,.1f} items/s")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _batches(ids: np.ndarray, size: int):
    for i in range(0, ids.size, size):
        yield ids[i:i + size]


def _encode_texts(enc: Encoder, texts: np.ndarray, ids: np.ndarray, cfg: EmbedConfig, n_rows: int,
                  reasons: Counter) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    lens = np.fromiter((len(t) for t in texts[ids]), dtype=np.int64, count=ids.size)
    order = ids[np.argsort(-lens, kind="stable")]  # longest first: similar lengths share a batch
    out = np.zeros((n_rows, enc.dim), dtype=np.float32)
    tokens = lengths = None
    T = cfg.max_tokens
    with _Progress(cfg.progress, f"embed {cfg.source}", int(ids.size)) as bar:
        for b in _batches(order, cfg.batch_size or 64):
            batch = texts[b].tolist()
            if cfg.tokens:
                pooled, hidden, mask = enc.encode_text_tokens(batch, max_tokens=T)
                if tokens is None:
                    tokens = np.zeros((n_rows, T, hidden.shape[-1]), dtype=np.float16)
                    lengths = np.zeros(n_rows, dtype=np.int32)
                L = min(T, hidden.shape[1])
                m = mask[:, :L].to(hidden.dtype).unsqueeze(-1)
                tokens[b, :L] = (hidden[:, :L] * m).numpy().astype(np.float16)
                lengths[b] = mask[:, :L].sum(1).numpy().astype(np.int32)
            else:
                pooled = enc.encode_text(batch)
            out[b] = pooled.numpy()
            bar.advance(len(b))
    return out, tokens, lengths


def _encode_images(enc: Encoder, refs: np.ndarray, base_dir: Path, ids: np.ndarray, cfg: EmbedConfig,
                   n_rows: int, reasons: Counter, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode (and per-image preprocess) in threads, one batch ahead of the model (double buffering)."""
    out = np.zeros((n_rows, enc.dim), dtype=np.float32)
    ok = np.zeros(n_rows, dtype=bool)
    cache = base_dir / "enrich" / "images"

    def load(ref: str) -> tuple[Any, str | None, str]:
        img, data, reason = load_image(ref, base_dir, cache)
        if img is None:
            return None, None, reason
        return enc.prepare_image(img), hashlib.sha256(data).hexdigest(), reason

    batches = list(_batches(ids, cfg.batch_size or 16))
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool, \
            _Progress(cfg.progress, "embed image", int(ids.size)) as bar:
        submit = lambda b: [pool.submit(load, r) for r in refs[b].tolist()]
        pending = submit(batches[0]) if batches else []
        for k, b in enumerate(batches):
            loaded = [f.result() for f in pending]
            pending = submit(batches[k + 1]) if k + 1 < len(batches) else []
            good = [i for i, (img, _, _) in enumerate(loaded) if img is not None]
            for img, _, reason in loaded:
                if img is None:
                    reasons[reason] += 1
            for i in good:
                digests[b[i]] = loaded[i][1]
            if good:
                out[b[good]] = enc.encode_image([loaded[i][0] for i in good]).numpy()
                ok[b[good]] = True
            bar.advance(len(b))
    return out, ok


def run_embed(data_dir: str | Path, cfg: EmbedConfig, *, encoder: Encoder | None = None) -> EmbedResult:
    """Encode ``cfg.source`` of the dataset at ``data_dir`` and write the store.

    Parameters
    ----------
    data_dir : path
        A prepared dataset directory.
    cfg : EmbedConfig
        Source, encoder and options.
    encoder : Encoder, optional
        A loaded encoder to reuse (otherwise ``cfg.encoder`` is loaded).

    Returns
    -------
    EmbedResult
        The safetensors path, the metadata written next to it, and the float32 matrix.
    """
    ds = DatasetDir(data_dir)
    if is_run_source(cfg.source):
        return _embed_run(ds, cfg)
    image = is_image_source(cfg.source)
    enc_name = cfg.encoder if cfg.encoder != "auto" else (DEFAULT_IMAGE_ENCODER if image else DEFAULT_TEXT_ENCODER)
    scft = enc_name.lower().startswith(SCFT_PREFIX)
    if scft and image:
        raise InputError("llmemb: encoders fine-tune on item texts: use --source attributes", field="--source")
    if cfg.tokens and (image or scft):
        raise InputError("--tokens needs a text source and a text encoder other than llmemb:", field="--tokens")
    n_rows = ds.n_items + 1
    reasons: Counter = Counter()
    if image:
        refs = image_refs(ds)
        reasons.update(refs.reasons)
        ids = np.flatnonzero(np.asarray([r is not None for r in refs.refs], dtype=bool))
    else:
        inputs = text_inputs(ds, cfg.source)
        reasons.update(inputs.reasons)
        ids = np.flatnonzero(~inputs.missing)
    name = cfg.out or (default_name(cfg.source, enc_name) if scft else None)
    if encoder is None and scft:
        encoder = _fit_scft(ds, cfg, enc_name[len(SCFT_PREFIX):], inputs.texts, ids, str(name))
    if encoder is None:
        encoder = load_encoder(enc_name, device=cfg.device, dtype=cfg.dtype, pooling=cfg.pooling,
                               max_length=cfg.max_length, image_fit=cfg.image_fit)
    name = name or default_name(cfg.source, encoder.name)
    modality = "image" if image else "text"
    if modality not in encoder.modalities:
        raise InputError(f"encoder {encoder.name!r} cannot encode {modality} (source {cfg.source!r})",
                         field="--encoder")

    if cfg.tokens and type(encoder).encode_text_tokens is Encoder.encode_text_tokens:
        raise InputError(f"encoder {encoder.name!r} has no token-level features", field="--tokens")
    if cfg.batch_size is None:
        gpu = str(encoder.device).startswith("cuda")
        cfg = cfg.model_copy(update={"batch_size": 256 if gpu else (16 if image else 64)})
    t0 = time.perf_counter()
    tokens = lengths = None
    if image:
        digests = np.full(n_rows, "", dtype=object)
        matrix, ok = _encode_images(encoder, refs.refs, refs.base_dir, ids, cfg, n_rows, reasons, digests)
        input_hash = hash_texts(np.where(ok, digests, None))
    else:
        matrix, tokens, lengths = _encode_texts(encoder, inputs.texts, ids, cfg, n_rows, reasons)
        ok = ~inputs.missing
        input_hash = hash_texts(inputs.texts)
    seconds = time.perf_counter() - t0
    ok[0] = False

    finite = np.isfinite(matrix).all(axis=1)
    bad = ok & ~finite
    if bad.any():
        reasons["non-finite output"] += int(bad.sum())
        ok &= finite
    matrix[~ok] = 0.0
    if tokens is not None:
        tokens[~ok] = 0
        lengths[~ok] = 0

    normalize = (not scft) if cfg.normalize is None else cfg.normalize
    matrix, pca_meta = _reduce(matrix, ok, cfg.pca or (SCFT_PCA if scft else None), normalize)

    missing_ids = np.flatnonzero(~ok)[1:]  # skip padding row 0
    meta: dict[str, Any] = {
        **encoder.describe(),
        "modality": modality,
        "source": cfg.source,
        "dim": int(matrix.shape[1]),
        "normalize": normalize,
        "pca": pca_meta,
        "input_hash": input_hash,
        "n_items": ds.n_items,
        "n_encoded": int(ok.sum()),
        "n_missing": int(missing_ids.size),
        "missing_items": missing_ids[:MISSING_LIST_CAP].tolist(),
        "missing_reasons": {k: int(v) for k, v in sorted(reasons.items()) if v},
        "tokens": None if tokens is None else {"max_tokens": cfg.max_tokens, "dim": int(tokens.shape[-1]),
                                               "normalized": False, "pca": False},
        "batch_size": cfg.batch_size,
        "device": encoder.device,
        "compute_dtype": cfg.dtype,
        "seconds": round(seconds, 3),
        "items_per_s": round(float(ids.size) / seconds, 2) if seconds > 0 else None,
        "dataset": {"path": str(ds.path), "format": ds.manifest.get("format")},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mmseqrec_version": __version__,
    }
    path = save_embedding(ds.path, name, matrix, meta, tokens=tokens, lengths=lengths)
    meta = {**meta, "name": name, "rows": int(matrix.shape[0]), "dtype_stored": "float16"}
    return EmbedResult(path=path, meta=meta, matrix=matrix)


SCFT_PREFIX = "llmemb:"
SCFT_PCA = 1536  # LLMEmb results/convert.ipynb: PCA(n_components=1536) of the SCFT embeddings


def _reduce(matrix: np.ndarray, ok: np.ndarray, pca: int | None, normalize: bool
            ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Optional PCA fitted on the rows in ``ok`` (others stay zero), then optional L2 normalisation."""
    pca_meta = None
    if pca is not None:
        mean, comps, ratio = pca_fit(matrix[ok], pca)
        reduced = np.zeros((matrix.shape[0], comps.shape[1]), dtype=np.float32)
        reduced[ok] = ((matrix[ok].astype(np.float64) - mean) @ comps).astype(np.float32)
        pca_meta = {"n_components": int(comps.shape[1]), "input_dim": int(matrix.shape[1]),
                    "explained_variance_ratio": [round(float(r), 6) for r in ratio],
                    "explained_variance_total": round(float(ratio.sum()), 6), "fitted_on": int(ok.sum())}
        matrix = reduced
    return (l2_normalize(matrix) if normalize else matrix), pca_meta


def _fit_scft(ds: DatasetDir, cfg: EmbedConfig, model: str, texts: np.ndarray, ids: np.ndarray,
              name: str) -> Encoder:
    """LLMEmb stage 1 (:mod:`mmseqrec.embed.llmemb`): LoRA contrastive fine-tuning on the items' texts,
    checkpointed under ``DATA/embed/NAME.scft/``; returns the tuned encoder."""
    from .encoders import _torch_dtype, resolve_device
    from .llmemb import load_scft_encoder

    if cfg.pooling == "cls":
        raise InputError("llmemb: pools mean or last (set scft.pooling)", field="--pooling")
    scft = cfg.scft if cfg.pooling is None else cfg.scft.model_copy(update={"pooling": cfg.pooling})
    if cfg.max_length is not None:
        scft = scft.model_copy(update={"max_length": cfg.max_length})
    device = resolve_device(cfg.device)
    dtype = None if cfg.dtype == "auto" else _torch_dtype(cfg.dtype, device)  # auto: float32 for training
    enc = load_scft_encoder(model, scft, device=device, dtype=dtype)
    enc.fit(texts[ids].tolist(), embed_dir(ds.path) / f"{name}.scft", hash_texts(texts), progress=cfg.progress)
    return enc


def _embed_run(ds: DatasetDir, cfg: EmbedConfig) -> EmbedResult:
    """``--source run:RUN``: the run's item table as a store (see :mod:`mmseqrec.embed.runs`)."""
    if cfg.encoder != "auto":
        raise InputError("--source run:RUN takes no --encoder (the run's item table is the embedding)",
                         field="--encoder")
    if cfg.tokens:
        raise InputError("--tokens needs a text source", field="--tokens")
    t0 = time.perf_counter()
    matrix, meta_run = run_item_table(ds, cfg.source)
    ok = np.ones(matrix.shape[0], dtype=bool)
    ok[0] = False
    normalize = bool(cfg.normalize)  # default: the raw table, as LLMEmb's itm_emb_sasrec.pkl
    matrix, pca_meta = _reduce(matrix, ok, cfg.pca, normalize)
    name = cfg.out or default_name("run", Path(cfg.source[4:]).name or "run")
    meta: dict[str, Any] = {
        **meta_run, "modality": "collaborative", "source": cfg.source, "dim": int(matrix.shape[1]),
        "normalize": normalize, "pca": pca_meta, "input_hash": None, "n_items": ds.n_items,
        "n_encoded": ds.n_items, "n_missing": 0, "missing_items": [], "missing_reasons": {}, "tokens": None,
        "seconds": round(time.perf_counter() - t0, 3),
        "dataset": {"path": str(ds.path), "format": ds.manifest.get("format")},
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "mmseqrec_version": __version__,
    }
    path = save_embedding(ds.path, name, matrix, meta)
    meta = {**meta, "name": name, "rows": int(matrix.shape[0]), "dtype_stored": "float16"}
    return EmbedResult(path=path, meta=meta, matrix=matrix)


def store_path(data_dir: str | Path, name: str) -> Path:
    return embed_dir(data_dir) / f"{name}.safetensors"
