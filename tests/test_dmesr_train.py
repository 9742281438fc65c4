"""DMESR / LLM-ESR / LLMEmb through the real trainer: embedding stores on disk -> train -> reload the run
(frozen matrices are rebuilt from the stores, not stored in the checkpoint) -> identical scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_cycle_dataset

from mmseqrec.cli.train import build_experiment
from mmseqrec.embed.store import save_embedding

torch.set_num_threads(1)
N_ITEMS, N_USERS, SEQ_LEN = 30, 60, 10


def write_dataset(root: Path) -> Path:
    """Users walk the item cycle with step 1 or 2 (learnable from the last two items)."""
    write_cycle_dataset(root, N_USERS, N_ITEMS, SEQ_LEN)
    # embedding stores: three MLLM prompt views + the original text (random but fixed features, 40-d)
    for k, name in enumerate(["views-image", "views-text", "views-both", "text"]):
        m = np.random.default_rng(10 + k).normal(size=(N_ITEMS + 1, 40)).astype(np.float32)
        m[0] = 0
        save_embedding(root, name, m, {"encoder": "random", "source": name})
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def _cfg(data_dir, encoder: str, extra=()):
    sets = ["train.epochs=6", "train.batch_size=32", "train.lr=0.005", "train.max_len=8", "train.progress=false",
            "train.patience=0", f"item_encoder.name={encoder}", "item_encoder.dim=16", "objective.name=ce",
            "model.dropout=0.1", "eval.ks=[10]", *extra]
    return build_experiment(data=data_dir, model="sasrec", sets=sets, seed=3)


@pytest.mark.parametrize(("encoder", "extra"), [
    ("dmesr", ["item_encoder.use_id_view=true"]),
    ("llmesr", ["item_encoder.embedding=views-both", "regularizers=[{name: self-distill, n_sim: 3}]"]),
    ("llmesr", ["item_encoder.embedding=views-both",
                "regularizers=[{name: self-distill, n_sim: 3, teacher: epoch}]"]),
    ("llmemb", ["item_encoder.embedding=text"]),
])
def test_train_and_reload(data_dir, tmp_path, encoder, extra):
    from mmseqrec.train import Trainer
    from mmseqrec.train.run import load_run

    run = tmp_path / encoder
    metrics = Trainer(_cfg(data_dir, encoder, extra), run).fit()
    # random ranking of 30 items: NDCG@10 about 0.15
    assert metrics["test"]["NDCG@10"] > 0.25, metrics["test"]
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    if encoder == "dmesr":
        assert "align" in log[0]["loss"]
    if encoder == "llmesr":
        assert "distill" in log[0]["loss"]
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
    assert not any(k.endswith((".features", "feat_image", "sim_users", "train_seqs")) for k in keys), keys
    loaded = load_run(run)
    ids = torch.tensor([[0, 0, 1, 2, 3], [4, 6, 8, 10, 12]])
    with torch.no_grad():
        s1 = loaded.model.score_all(ids)
        s2 = load_run(run).model.score_all(ids)
    torch.testing.assert_close(s1, s2)


def test_epoch_teacher_resume_is_bit_identical(data_dir, tmp_path):
    """teacher: epoch caches the neighbour states at each epoch start (eval mode, no random numbers), so an
    interrupted and resumed run equals the uninterrupted one."""
    from safetensors.torch import load_file

    from mmseqrec.train import Trainer

    extra = ["item_encoder.embedding=views-both", "regularizers=[{name: self-distill, n_sim: 3, teacher: epoch}]"]
    Trainer(_cfg(data_dir, "llmesr", [*extra, "train.epochs=3"]), tmp_path / "full").fit()
    Trainer(_cfg(data_dir, "llmesr", [*extra, "train.epochs=1"]), tmp_path / "cut").fit()
    Trainer(_cfg(data_dir, "llmesr", [*extra, "train.epochs=3"]), tmp_path / "cut", resume=True).fit()
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
