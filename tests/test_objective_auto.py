"""``objective.name: auto`` (the default): ``ce`` up to ``objective.auto_max_items`` items, ``sampled-softmax``
above; resolved once before training, recorded in config.yaml / metrics.json, announced on stderr, accepted by
every backbone and item encoder; configs/ pin their own objective, so the default changes none of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli, write_cycle_dataset
from pydantic import ValidationError

from mmseqrec.cli.train import build_experiment
from mmseqrec.models import ObjectiveConfig, next_item_loss
from mmseqrec.models.losses import AUTO_MAX_ITEMS
from mmseqrec.train import Trainer, load_experiment

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 30
TINY = ["train.epochs=1", "train.batch_size=32", "train.max_len=8", "train.progress=false", "train.patience=0",
        "item_encoder.dim=16", "eval.ks=[10]"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_cycle_dataset(tmp_path_factory.mktemp("data") / "ds", 40, N_ITEMS, 10)


def test_default_is_auto_and_resolves_at_the_threshold():
    cfg = ObjectiveConfig()
    assert cfg.name == "auto" and cfg.auto_max_items == AUTO_MAX_ITEMS
    at, above = cfg.resolve(AUTO_MAX_ITEMS), cfg.resolve(AUTO_MAX_ITEMS + 1)
    assert at.name == "ce" and cfg.resolve(1).name == "ce"
    assert above.name == "sampled-softmax" and above.n_negatives == 256
    assert cfg.name == "auto"  # resolve returns a copy
    own = ObjectiveConfig(auto_max_items=100, n_negatives=64)
    assert own.resolve(100).name == "ce"
    assert (own.resolve(101).name, own.resolve(101).n_negatives) == ("sampled-softmax", 64)
    for name in ("bce", "ce", "gbce", "sampled-softmax", "ce-chunked", "sampled-softmax-logq"):
        for n in (10, AUTO_MAX_ITEMS + 1):  # a named objective is never replaced
            assert ObjectiveConfig(name=name).resolve(n).name == name
    assert ObjectiveConfig(name="bce").auto_note(10) is None


def test_auto_note_says_what_and_why():
    assert ObjectiveConfig(auto_max_items=50).auto_note(30) == (
        "objective: auto -> ce (30 items <= objective.auto_max_items 50: the full softmax is affordable on this "
        "catalogue and learns the most per epoch; set objective.name to choose another)")
    note = ObjectiveConfig(auto_max_items=50).auto_note(12101)
    assert note.startswith("objective: auto -> sampled-softmax (12,101 items > objective.auto_max_items 50")
    assert "256 uniform negatives" in note


def test_bad_values_are_clear():
    with pytest.raises(ValidationError, match="auto"):
        ObjectiveConfig(name="softmax")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ObjectiveConfig(auto_max_items=0)
    with pytest.raises(ValidationError, match="bce objective only .*auto.*set objective.name: bce"):
        ObjectiveConfig(negatives_exclude="history")
    with pytest.raises(ValidationError, match="bce objective only") as named:
        ObjectiveConfig(name="ce", negatives_exclude="history")
    assert "auto" not in str(named.value)
    assert ObjectiveConfig(name="bce", negatives_exclude="history").resolve(10).name == "bce"
    with pytest.raises(ValueError, match="resolved from the catalogue size"):
        next_item_loss(torch.zeros(2, 4), torch.tensor([1, 2]), torch.zeros(5, 4), ObjectiveConfig())


def test_cli_history_negatives_without_bce_is_one_error_line(data_dir, tmp_path, capsys):
    code = run_cli(["train", "--data", str(data_dir), "--out", str(tmp_path / "r"),
                    "--set", "objective.negatives_exclude=history", "--set", "train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "set objective.name: bce" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("max_items", "expected"), [(N_ITEMS, "ce"), (N_ITEMS - 1, "sampled-softmax")])
def test_trainer_records_the_resolved_objective(data_dir, tmp_path, capsys, max_items, expected):
    cfg = build_experiment(data=data_dir, sets=[*TINY, f"objective.auto_max_items={max_items}"], seed=3)
    assert cfg.objective.name == "auto"
    trainer = Trainer(cfg, tmp_path / "run")
    assert cfg.objective.name == "auto"  # the caller's config is not changed
    assert trainer.cfg.objective.name == trainer.model.objective.name == expected
    metrics = trainer.fit()
    assert metrics["objective"] == expected
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["objective"] == expected
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["objective"]["name"] == expected
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("objective: auto")]
    assert len(notes) == 1 and notes[0].startswith(
        f"objective: auto -> {expected} ({N_ITEMS} items {'<=' if expected == 'ce' else '>'} "
        f"objective.auto_max_items {max_items}: ")
    # resuming with the same (auto) config continues the run: the recorded name is what auto resolves to
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})})
    assert Trainer(more, tmp_path / "run", resume=True).fit()["epochs_run"] == 2


def test_named_objective_is_kept_and_baselines_keep_auto(data_dir, tmp_path, capsys):
    t = Trainer(build_experiment(data=data_dir, sets=[*TINY, "objective.name=bce"]), tmp_path / "bce")
    assert t.cfg.objective.name == "bce"
    pop = Trainer(build_experiment(data=data_dir, model="pop", sets=TINY), tmp_path / "pop")
    assert pop.cfg.objective.name == "auto"  # no loss trains a closed-form baseline
    assert "objective: auto" not in capsys.readouterr().err


@pytest.mark.parametrize("model", ["sasrec", "bert4rec", "gru4rec"])
def test_every_backbone_trains_with_both_sides_of_auto(data_dir, tmp_path, model):
    for max_items, expected in ((N_ITEMS, "ce"), (1, "sampled-softmax")):
        cfg = build_experiment(data=data_dir, model=model, sets=[*TINY, f"objective.auto_max_items={max_items}"])
        metrics = Trainer(cfg, tmp_path / expected).fit()
        assert metrics["objective"] == expected and metrics["test"]["NDCG@10"] > 0


@pytest.mark.parametrize("preset", ["llmesr-sasrec", "llmesr-bert4rec", "llmesr-gru4rec", "dmesr-llmesr-sasrec"])
def test_llmesr_and_dmesr_encoders_train_with_both_sides_of_auto(tmp_path, preset):
    from test_dmesr_train import write_dataset
    from test_llmesr_presets import SMALL

    data = write_dataset(tmp_path / "ds")
    for max_items, expected in ((10**6, "ce"), (1, "sampled-softmax")):
        cfg = build_experiment(ROOT / "configs" / "presets" / f"{preset}.yaml", data=data, seed=1, sets=[
            *SMALL, "train.epochs=1", "objective.name=auto", "objective.negatives_exclude=none",
            f"objective.auto_max_items={max_items}"])
        metrics = Trainer(cfg, tmp_path / expected).fit()
        assert metrics["objective"] == expected and metrics["test"]["NDCG@10"] > 0


def test_sequence_model_resolves_auto_itself():
    from mmseqrec.models import SequenceModel
    from mmseqrec.train.run import build_model

    cfg = load_experiment(None, ["train.max_len=8", "item_encoder.dim=8"])
    assert cfg.objective.name == "auto"
    small = build_model(cfg, 50)
    large = build_model(cfg, AUTO_MAX_ITEMS + 1)
    assert isinstance(small, SequenceModel)
    assert small.objective.name == "ce" and large.objective.name == "sampled-softmax"
    assert SequenceModel(small.item_encoder, small.backbone).objective.name == "ce"


def _sequence_configs():
    """Every sequence-model run that configs/ describes: the single-run configs and each run of every grid."""
    from mmseqrec.experiment.config import load_grid
    from mmseqrec.experiment.runner import plan_runs
    from mmseqrec.registry import model_spec

    for f in sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "presets").glob("*.yaml")):
        raw = yaml.safe_load(f.read_text())
        if "model" in raw or "objective" in raw:  # experiment configs (not e.g. llmemb-scft.yaml's options)
            yield f.name, load_experiment(f)
    for f in sorted((ROOT / "configs" / "experiments").glob("*.yaml")):
        for r in plan_runs(load_grid(f), "/nonexistent"):
            spec = model_spec(r.backbone)
            if not (spec.closed_form or spec.general):
                yield f"{f.name}:{r.variant}/{r.backbone}", load_experiment(base=r.config)


def test_configs_pin_their_objective():
    seen = dict(_sequence_configs())
    assert len(seen) > 15 and any(k.startswith("beauty-sasrec.yaml:") for k in seen)
    unpinned = [k for k, cfg in seen.items() if cfg.objective.name == "auto"]
    assert not unpinned, f"configs that would change with the default objective: {unpinned}"
