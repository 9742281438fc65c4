"""`make demo`'s step 2b (scripts/demo_check.py) fails loudly when a backbone does not beat popularity."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl


def _load():
    path = Path(__file__).resolve().parents[1] / "scripts" / "demo_check.py"
    spec = importlib.util.spec_from_file_location("demo_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_backbone_at_popularity_level_fails_the_demo(tmp_path, capsys):
    rows = [("sasrec", "ID-only", 0.09, 1e-6), ("bert4rec", "ID-only", 0.03, 0.52), ("pop", "Pop", 0.025, None)]
    pl.DataFrame({"dataset": ["d"] * 3, "backbone": [r[0] for r in rows], "variant": [r[1] for r in rows],
                  "protocol": ["full"] * 3, "metric": ["HR@10"] * 3, "mean": [r[2] for r in rows],
                  "p_adj_vs_Pop": [r[3] for r in rows]}).write_csv(tmp_path / "results.csv")
    assert _load().main(tmp_path) == 1
    err = capsys.readouterr().err
    assert "DEMO CHECK FAILED" in err and "bert4rec does not beat popularity" in err
    assert "sasrec does not beat" not in err and "sasrec: no run directory" in err
