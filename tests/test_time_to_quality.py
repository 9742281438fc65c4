"""benchmarks/time_to_quality.py: both clocks, targets from the reference, kept runs that `evaluate` reads."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import run_cli, write_cycle_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_quality.py"


@pytest.fixture(scope="module")
def ttq():
    spec = importlib.util.spec_from_file_location("time_to_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_parse_one_value_or_per_protocol(ttq):
    assert ttq._parse_targets("0.05", ["full", "sampled:100"]) == {"full": 0.05, "sampled:100": float("inf")}
    assert ttq._parse_targets("full=0.03,sampled:100=0.3", ["full", "sampled:100"]) == {
        "full": 0.03, "sampled:100": 0.3}


def test_recipes_side_by_side_with_kept_runs(ttq, tmp_path, monkeypatch, capsys):
    data = write_cycle_dataset(tmp_path / "ds", 60, 20, 10)
    out, keep = tmp_path / "res.json", tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", [
        "time_to_quality.py", "--data", str(data), "--threads", "1", "--max-epochs", "4", "--eval-every", "2",
        "--patience", "0", "--also", "sampled:10", "--keep", str(keep), "--json", str(out),
        "--set", "train.max_len=8", "--set", "item_encoder.dim=16", "--set", "eval.ks=[1,5,10]",
        "--recipe", "ref:objective.name=bce", "--recipe", "ce:objective.name=ce,train.eval_every=1"])
    ttq.main()
    ref, ce = json.loads(out.read_text())
    # cadence: the global one, and a recipe's own (the last epoch is always scored)
    assert [p["epoch"] for p in ref["curve"]] == [2, 4] and ref["eval_every"] == 2
    assert [p["epoch"] for p in ce["curve"]] == [1, 2, 3, 4] and ce["eval_every"] == 1
    for r in (ref, ce):
        cpu = [p["cpu_s"] for p in r["curve"]]
        assert cpu == sorted(cpu) and cpu[0] > 0 and r["cpu_s"] >= r["train_cpu_s"] > 0
    # the reference's targets are its own best valid values, reached at its best point
    best = max(ref["curve"], key=lambda p: p["full"])
    assert ref["best_valid"]["full"] == best["full"] and ref["best_epoch"] == best["epoch"]
    first = next(p for p in ref["curve"] if p["full"] >= best["full"])
    assert ref["reached_cpu_s"]["full"] == first["cpu_s"] and ref["reached_s"]["full"] == first["clock_s"]
    reached = [p for p in ce["curve"] if p["full"] >= ref["best_valid"]["full"]]
    assert ce["reached_cpu_s"]["full"] == (reached[0]["cpu_s"] if reached else None)
    table = capsys.readouterr().out
    assert "| ref | 2 | 4 (" in table and "CPU s to all" in table
    # the same table from the saved results, without training
    monkeypatch.setattr(sys, "argv", ["time_to_quality.py", "--also", "sampled:10", "--from-json", str(out)])
    ttq.main()
    again = capsys.readouterr().out
    assert again[again.index("targets"):] == table[table.index("targets"):]
    # a kept run is a run directory: its best checkpoint is the best valid one, and `evaluate` re-scores it
    metrics = json.loads((keep / "ref" / "metrics.json").read_text())
    assert metrics["best_epoch"] == ref["best_epoch"] and metrics["epochs_run"] == 4
    assert metrics["valid"]["NDCG@10"] == pytest.approx(ref["best_valid"]["full"])
    assert metrics["test"]["NDCG@10"] == pytest.approx(ref["test_NDCG@10"])
    assert run_cli(["evaluate", str(keep / "ce"), "--protocol", "sampled:10"]) == 0
    assert (keep / "ce" / "eval-sampled-10.json").exists()
