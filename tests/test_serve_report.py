"""``mmseqrec report ... --out report.html``: one self-contained HTML file from real runs and an experiment folder."""

from __future__ import annotations

import json
import re
import shutil

import polars as pl
import pytest
from serve_fixtures import build_served, run_cli


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return build_served(tmp_path_factory.mktemp("report"))


def test_html_report_of_runs_is_self_contained(served, tmp_path):
    out = tmp_path / "report.html"
    assert run_cli(["report", str(served["sasrec"]), str(served["gru4rec"]), "--out", str(out)]) == 0
    doc = out.read_text()
    # every image is inline, nothing is fetched from elsewhere
    srcs = re.findall(r"src='([^']*)'", doc)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in doc and "<script" not in doc
    # the results table holds the runs' own test metrics
    test = json.loads((served["sasrec"] / "metrics.json").read_text())["test"]
    assert f"{test['NDCG@10']:.4f}" in doc
    assert "Paired comparison against sasrec" in doc and "p Wilcoxon (raw / Holm)" in doc
    # training curves, long tail, examples with images of the catalogue
    assert "alt='training curves'" in doc
    assert doc.count("<th>HR@10</th>") >= 2 and "item_popularity" in doc and "user_length" in doc
    assert "user u001" in doc and doc.count("class='card") >= 2 * 3 * 6
    titles = pl.read_parquet(served["data"] / "items.parquet")["title"].to_list()
    assert any(t in doc for t in titles)


def test_html_report_of_an_experiment_folder_marks_significance(served, tmp_path):
    exp = tmp_path / "exp"
    for name in ("sasrec", "gru4rec"):
        shutil.copytree(served[name], exp / "runs" / name)
    # results.csv as `mmseqrec experiment` writes it (columns of experiment.report.summarise)
    pl.DataFrame({
        "dataset": ["syn"] * 4, "backbone": ["sasrec"] * 4, "variant": ["id", "id", "mm", "mm"],
        "protocol": ["full"] * 4, "metric": ["NDCG@10", "HR@10"] * 2, "mean": [0.1, 0.2, 0.15, 0.18],
        "std": [0.01, 0.02, 0.01, 0.02], "n_seeds": [2] * 4, "n_cases": [None, None, 120, 120],
        "p_wilcoxon": [None, None, 0.001, 0.3], "p_ttest": [None, None, 0.002, 0.31], "p_adj": [None, None, 0.002, 0.3],
        "p_adjust": [None, None, "holm", "holm"]}).write_csv(exp / "results.csv")
    out = tmp_path / "r.html"
    assert run_cli(["report", str(exp), "--out", str(out)]) == 0
    doc = out.read_text()
    assert "Experiment exp" in doc and "0.1500 ± 0.0100" in doc
    assert doc.count("class='sig'>▲") == 2  # the legend's mark and NDCG@10 of mm (p_adj 0.002)
    assert "runs/sasrec" in doc and "runs/gru4rec" in doc  # curves and examples from the runs inside


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
    assert run_cli(["report", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2
    assert "neither an evaluated run directory" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
