"""The ``run:RUN`` source of ``mmseqrec embed``: the item table of a trained run as an embedding store.

LLMEmb's stage 2 aligns its adapted LLM embeddings with the item embeddings of a trained SASRec
(``itm_emb_sasrec.pkl``, written by ``SeqTrainer.save_item_emb``: ``_get_embedding(1..N)`` of the best
checkpoint). Here the run's scoring table ``SequenceModel.item_matrix()`` of its best checkpoint (``[N + 1, V*d]``,
the ID table for an ``id`` encoder; views concatenated otherwise; extra tokens such as BERT4Rec's mask dropped)
becomes ``DATA/embed/NAME.safetensors``, row 0 = padding, with the run named in the JSON sidecar.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import DatasetDir
from ..errors import InputError

__all__ = ["RUN_PREFIX", "is_run_source", "run_item_table"]

RUN_PREFIX = "run:"


def is_run_source(source: str) -> bool:
    return source.startswith(RUN_PREFIX)


def _same_items(ds: DatasetDir, recorded: str | None) -> bool | None:
    """Whether the run's recorded dataset has the same item vocabulary as ``ds`` (``None``: not checkable)."""
    if not recorded or not Path(recorded).exists():
        return None
    if Path(recorded).resolve() == ds.path.resolve():
        return True
    try:
        other = DatasetDir(recorded)
        return bool(np.array_equal(other.item_ids(), ds.item_ids()))
    except InputError:
        return None


def run_item_table(ds: DatasetDir, source: str) -> tuple[np.ndarray, dict[str, Any]]:
    """``(matrix [N + 1, D] float32, metadata)`` of the run named by ``source`` (``run:RUN_DIR``)."""
    import torch

    from ..train.run import BEST, CONFIG, METRICS, load_run

    run_dir = Path(source[len(RUN_PREFIX):]).expanduser()
    if not (run_dir / CONFIG).exists():
        raise InputError("not a run directory (no config.yaml); train one with `mmseqrec train`", file=run_dir,
                         field="--source")
    if not (run_dir / BEST).exists():
        raise InputError("the run has no best checkpoint (model.safetensors) yet", file=run_dir, field="--source")
    from ..train.config import load_experiment

    cfg = load_experiment(run_dir / CONFIG)
    same = _same_items(ds, cfg.data.path)
    if same is False:
        raise InputError(f"the run was trained on {cfg.data.path}, whose items differ from {ds.path}",
                         file=run_dir / CONFIG, field="data.path")
    run = load_run(run_dir, device="cpu", data_dir=ds.path)
    with torch.no_grad():
        matrix = run.model.item_matrix().detach().float().cpu().numpy()
    if matrix.shape[0] != ds.n_items + 1:  # pragma: no cover - guarded by the checkpoint shapes
        raise InputError(f"run table has {matrix.shape[0]} rows, the dataset needs {ds.n_items + 1}", file=run_dir)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    matrix[0] = 0.0
    metrics = None
    if (run_dir / METRICS).exists():
        try:
            metrics = json.loads((run_dir / METRICS).read_text())
        except json.JSONDecodeError:
            metrics = None
    meta = {
        "encoder": "run", "encoder_class": "SequenceModel.item_matrix", "model": str(run_dir.resolve()),
        "pooling": None, "model_normalizes": False,
        "run": {"path": str(run_dir.resolve()), "checkpoint": BEST, "model": cfg.model.name,
                "item_encoder": cfg.item_encoder.name, "views": int(run.model.item_encoder.n_views),
                "dim": int(matrix.shape[1]), "seed": cfg.seed, "dataset_recorded": cfg.data.path,
                "same_items_checked": same is True, "metrics": metrics},
    }
    return matrix, meta
