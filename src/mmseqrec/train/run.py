"""Building models from experiment configs and loading trained run directories.

Run directory files (see docs/architecture.md): ``config.yaml`` (fully resolved), ``model.safetensors``
(best checkpoint), ``last.safetensors`` + ``optim.safetensors`` + ``state.json`` (resume), ``log.jsonl``
(per epoch), ``metrics.json``, ``ranks.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import DatasetDir
from ..embed.store import load_embedding
from ..errors import InputError
from ..models.baselines import ClosedFormModel
from ..models.sequence import SequenceModel
from ..registry import item_encoder_spec, model_spec
from .checkpoint import load_model
from .config import ExperimentConfig, load_experiment

__all__ = [
    "BEST",
    "CONFIG",
    "LAST",
    "LOG",
    "METRICS",
    "OPTIM",
    "RANKS",
    "STATE",
    "LoadedRun",
    "build_model",
    "check_data",
    "is_run_file",
    "item_popularity",
    "load_run",
    "load_tensors",
    "recorded_data",
    "resolve_device",
    "training_sequences",
]

CONFIG, BEST, LAST, OPTIM = "config.yaml", "model.safetensors", "last.safetensors", "optim.safetensors"
STATE, LOG, METRICS, RANKS = "state.json", "log.jsonl", "metrics.json", "ranks.parquet"
#: Patterns of every file a run directory may hold (train, evaluate, experiment, interrupted writes).
RUN_FILES = (CONFIG, BEST, LAST, OPTIM, STATE, LOG, METRICS, RANKS, "eval-*.json", "ranks-*.parquet", "*.next",
             ".*.tmp")


def is_run_file(path: Path) -> bool:
    """Whether ``path`` (an entry of a run directory) is a file that training or evaluation writes."""
    import fnmatch

    return any(fnmatch.fnmatchcase(path.name, pat) for pat in RUN_FILES)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)", field="train.device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA requested but not available", field="train.device")
    return dev


def load_tensors(cfg: ExperimentConfig, data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Embedding matrices named by ``cfg.item_encoder.embeddings()`` and token-level features named by
    ``cfg.item_encoder.token_embeddings()`` (as ``NAME:tokens`` / ``NAME:lengths``), read from ``DIR/embed``."""
    names = list(getattr(cfg.item_encoder, "embeddings", list)())
    token_names = list(getattr(cfg.item_encoder, "token_embeddings", list)())
    if not names and not token_names:
        return {}
    data_dir = data_dir or cfg.data.path
    if data_dir is None:
        raise InputError("this item encoder needs embedding stores but no data directory is set",
                         field="data.path")
    out: dict[str, torch.Tensor] = {}
    for n in dict.fromkeys(names + token_names):
        store = load_embedding(data_dir, n)
        if n in names:
            out[n] = torch.from_numpy(np.asarray(store.matrix, dtype=np.float32))
        if n in token_names:
            if store.tokens is None or store.lengths is None:
                raise InputError(f"embedding {n!r} has no token-level features; re-run "
                                 f"`mmseqrec embed ... --out {n} --tokens`", field="item_encoder")
            out[f"{n}:tokens"] = torch.from_numpy(np.asarray(store.tokens, dtype=np.float32))
            out[f"{n}:lengths"] = torch.from_numpy(np.asarray(store.lengths, dtype=np.int64))
    return out


def build_model(cfg: ExperimentConfig, n_items: int, tensors: dict[str, torch.Tensor] | None = None,
                regularizers: list[torch.nn.Module] | None = None) -> SequenceModel | ClosedFormModel:
    """Item encoder + backbone + objective for ``cfg`` (weights initialised from the current torch RNG), or an
    unfitted closed-form baseline (``pop``, ``itemknn``) for a registry entry with ``closed_form=True``."""
    mspec = model_spec(cfg.model.name)
    if mspec.closed_form:
        return mspec.build(cfg.model, n_items)
    espec = item_encoder_spec(cfg.item_encoder.name)
    encoder = espec.build(cfg.item_encoder, n_items=n_items, extra_tokens=mspec.extra_tokens,
                          tensors=tensors or {})
    try:
        backbone = mspec.build(cfg.model, int(encoder.dim))
    except ValueError as exc:  # a combination of sizes the backbone cannot take, e.g. width % n_heads
        raise InputError(f"{exc} (item encoder width {int(encoder.dim)})", field="model") from None
    return SequenceModel(encoder, backbone, cfg.objective, regularizers)


def training_sequences(ds_seqs, train_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(items, indptr)``: every user's training prefix (leave-one-out: no validation or test item), in CSR."""
    lengths = np.diff(ds_seqs.indptr)
    owner = np.repeat(np.arange(lengths.size), lengths)
    in_train = np.arange(ds_seqs.items.size) < train_end[owner]
    indptr = np.concatenate([[0], np.cumsum(train_end - ds_seqs.indptr[:-1])]).astype(np.int64)
    return ds_seqs.items[in_train].astype(np.int64), indptr


def item_popularity(ds_seqs, train_end: np.ndarray) -> np.ndarray:
    """Training interactions per item id (``[n_items + 1]``, index 0 = 0)."""
    items, _ = training_sequences(ds_seqs, train_end)
    return np.bincount(items, minlength=ds_seqs.n_items + 1).astype(np.int64)


@dataclass
class LoadedRun:
    """A trained run: its config, its model (eval mode, best checkpoint) and its dataset."""

    path: Path
    config: ExperimentConfig
    model: SequenceModel | ClosedFormModel
    dataset: DatasetDir
    device: torch.device


def recorded_data(run: Path) -> dict[str, Any] | None:
    """The dataset identity a run recorded (``metrics.json``, else ``state.json``); ``None`` for older runs."""
    import json

    for name in (METRICS, STATE):
        try:
            data = json.loads((run / name).read_text()).get("data")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(data, dict) and data.get("sha256"):
            return data
    return None


def check_data(run: Path, ds: DatasetDir, *, force: bool = False) -> None:
    """Refuse to use ``ds`` with a run trained on other data: a different item count always (the model cannot
    score it), a different content (sha256 of interactions + items) unless ``force``."""
    rec = recorded_data(run)
    if rec is None:
        return
    if rec.get("n_items") is not None and int(rec["n_items"]) != ds.n_items:
        raise InputError(f"the run was trained on a dataset with {rec['n_items']} items, this one has {ds.n_items} "
                         f"(trained on {rec.get('path')}); pass that dataset with --data",
                         file=ds.path / "manifest.json", field="n_items")
    if rec["sha256"] != ds.identity["sha256"] and not force:
        raise InputError(f"not the dataset this run was trained on (sha256 {ds.identity['sha256'][:12]}, the run "
                         f"recorded {rec['sha256'][:12]} for {rec.get('path')}); pass --force to use it anyway",
                         file=ds.path)


def load_run(run_dir: str | Path, device: str | None = None, data_dir: str | Path | None = None,
             checkpoint: str = BEST, force: bool = False) -> LoadedRun:
    """Load ``RUN/config.yaml`` + the best checkpoint; ``data_dir`` overrides the recorded dataset path (it must
    be the dataset the run was trained on, see :func:`check_data`, unless ``force``)."""
    run = Path(run_dir)
    if not (run / CONFIG).exists():
        raise InputError("not a run directory (no config.yaml); run `mmseqrec train` first", file=run)
    cfg = load_experiment(run / CONFIG)
    if getattr(model_spec(cfg.model.name), "general", False):
        raise InputError(f"{cfg.model.name} is a general (user-item) model: its run is scored at training time "
                         "(metrics.json); load it with mmseqrec.train.general.load_general_run", file=run / CONFIG)
    data = data_dir or cfg.data.path
    if data is None:
        raise InputError("the run records no dataset path; pass --data", file=run / CONFIG, field="data.path")
    ds = DatasetDir(data)
    check_data(run, ds, force=force)
    dev = resolve_device(device or cfg.train.device)
    model = build_model(cfg, ds.n_items, load_tensors(cfg, data))
    load_model(run / checkpoint, model, ignore_prefixes=("regularizers.",))  # training-only terms
    model.to(dev).eval()
    return LoadedRun(run, cfg, model, ds, dev)
