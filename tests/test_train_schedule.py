"""Learning-rate schedules (``train.lr_schedule``, ``train.warmup_epochs``): hand-computed rates, and the
trainer applies them per optimiser step."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import write_cycle_dataset

from mmseqrec.cli.train import build_experiment
from mmseqrec.train import Trainer
from mmseqrec.train.config import TrainConfig
from mmseqrec.train.schedule import lr_at

torch.set_num_threads(1)


def test_constant_rate_with_and_without_warmup():
    assert [lr_at(TrainConfig(lr=0.01), s, 4) for s in (0, 3, 100)] == [0.01, 0.01, 0.01]
    warm = TrainConfig(lr=0.01, warmup_epochs=0.5)  # 2 warm-up steps of 4 per epoch
    assert [lr_at(warm, s, 4) for s in (0, 1, 2, 50)] == pytest.approx([0.005, 0.01, 0.01, 0.01])


def test_cosine_rate_by_hand():
    cfg = TrainConfig(lr=0.01, lr_schedule="cosine", epochs=2, warmup_epochs=1)  # 4 steps/epoch: 4 warm, 4 cosine
    got = [lr_at(cfg, s, 4) for s in range(9)]
    want = [0.0025, 0.005, 0.0075, 0.01] + [0.01 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)] + [0.0]
    assert got == pytest.approx(want)
    assert lr_at(TrainConfig(lr=0.01, lr_schedule="cosine", epochs=1), 0, 10) == pytest.approx(0.01)


def test_trainer_follows_the_schedule(tmp_path):
    data = write_cycle_dataset(tmp_path / "ds", 40, 20, 8)
    sets = ["train.epochs=2", "train.batch_size=16", "train.lr=0.01", "train.max_len=6", "train.progress=false",
            "train.lr_schedule=cosine", "train.warmup_epochs=0.5", "item_encoder.dim=8", "objective.name=ce"]
    trainer = Trainer(build_experiment(data=data, model="sasrec", sets=sets, seed=0), tmp_path / "run")
    seen = []
    step = trainer.optimizer.step

    def record(*a, **k):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*a, **k)

    trainer.optimizer.step = record
    trainer.fit()
    n = len(trainer.batches)
    assert len(seen) == 2 * n
    assert seen == pytest.approx([lr_at(trainer.cfg.train, s, n) for s in range(2 * n)])
    assert seen[0] < seen[n // 2] and seen[-1] < seen[n]  # warm-up rises, cosine falls
