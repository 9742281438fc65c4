"""The faithful LLM-ESR presets (configs/presets/llmesr-*.yaml) and the DMESR preset built on them: they load,
say what the official code does, train through the real trainer, and the DMESR preset differs from
``llmesr-sasrec`` only in its item encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_dmesr_train import write_dataset

from mmseqrec.cli.train import build_experiment

torch.set_num_threads(1)
PRESETS = Path(__file__).resolve().parents[1] / "configs" / "presets"
SMALL = ["model.max_len=8", "train.epochs=2", "train.progress=false", "item_encoder.dim=16",
         "eval.protocol=sampled:20", "regularizers=[{name: self-distill, n_sim: 3, embedding: text}]"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def test_llmesr_presets_say_what_the_code_does():
    for backbone in ("sasrec", "bert4rec", "gru4rec"):
        cfg = build_experiment(PRESETS / f"llmesr-{backbone}.yaml")
        enc, m, t = cfg.item_encoder, cfg.model, cfg.train
        assert (enc.name, enc.dim, enc.heads, enc.causal, enc.freeze) == ("llmesr", 64, 2, False, True)
        assert (t.batch_size, t.lr, t.weight_decay, t.grad_clip, t.patience, t.bf16) == (128, 1e-3, 0, 0, 20, False)
        assert cfg.objective.name == "bce" and cfg.eval.protocol == "sampled:100" and cfg.eval.ks == [10]
        assert cfg.objective.negatives_exclude == "history"
        assert m.max_len == 200 and cfg.data.min_len == 3
        (reg,) = cfg.regularizers
        assert (reg.alpha, reg.n_sim, reg.n_retrieve, reg.teacher) == (0.1, 10, 100, "step")
        if backbone == "gru4rec":
            assert (m.dropout, m.n_layers, m.bias, cfg.objective.positions) == (0.0, 1, False, "last")
        else:
            assert (m.n_layers, m.n_heads, m.dropout, m.block, m.positions, m.mask_padding, m.ffn_mult,
                    m.activation) == (2, 1, 0.5, "sasrec", "from-start", False, 1, "relu")
    assert build_experiment(PRESETS / "llmesr-sasrec.yaml").model.causal is False
    bert = build_experiment(PRESETS / "llmesr-bert4rec.yaml").model
    assert bert.mask_prob == 0.6 and bert.last_item_copy


def test_dmesr_preset_differs_from_llmesr_only_in_the_item_encoder():
    a = yaml.safe_load((PRESETS / "llmesr-sasrec.yaml").read_text())
    b = yaml.safe_load((PRESETS / "dmesr-llmesr-sasrec.yaml").read_text())
    assert set(a) == set(b)
    assert {k for k in a if a[k] != b[k]} == {"item_encoder"}
    enc = build_experiment(PRESETS / "dmesr-llmesr-sasrec.yaml").item_encoder
    assert enc.use_id_view and enc.id_init_scale == "raw" and enc.id_pca_view == "raw" and not enc.causal


@pytest.mark.parametrize("preset", ["llmesr-sasrec", "llmesr-bert4rec", "llmesr-gru4rec", "dmesr-llmesr-sasrec"])
def test_presets_train(data_dir, tmp_path, preset):
    from mmseqrec.train import Trainer

    cfg = build_experiment(PRESETS / f"{preset}.yaml", data=data_dir, sets=SMALL, seed=1)
    metrics = Trainer(cfg, tmp_path / preset).fit()
    assert metrics["test"]["NDCG@10"] > 0 and "sampled:20" in str(metrics)
