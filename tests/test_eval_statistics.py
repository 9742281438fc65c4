"""Seed-aware paired tests (the user is the unit), Holm / BH corrections, and experiment reports built from
finished run directories only (no training)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy import stats

from mmseqrec.errors import InputError
from mmseqrec.evaluate import adjust_pvalues, case_means, paired_test
from mmseqrec.evaluate.metrics import case_values
from mmseqrec.experiment import GridConfig, summarise
from mmseqrec.experiment.report import to_markdown


def _frame(users, targets, ranks, tied=None):
    d = {"user": np.asarray(users), "target": np.asarray(targets), "rank": np.asarray(ranks)}
    if tied is not None:
        d["tied"] = np.asarray(tied)
    return pl.DataFrame(d)


def _pair(n=300, seed=0):
    rng = np.random.default_rng(seed)
    users, targets = np.arange(1, n + 1), rng.integers(1, 80, n)
    ra = rng.integers(0, 40, n)
    rb = np.maximum(ra - rng.integers(-3, 6, n), 0)
    return _frame(users, targets, ra), _frame(users, targets, rb)


@pytest.mark.parametrize("metric", ["HR@10", "NDCG@10", "MRR@20"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_k_identical_copies_give_exactly_the_p_of_one(metric, k):
    a, b = _pair()
    one = paired_test(a, b, metric)
    many = paired_test([a] * k, [b.sample(fraction=1.0, shuffle=True, seed=i) for i in range(k)], metric)
    assert many["p_wilcoxon"] == one["p_wilcoxon"] and many["p_ttest"] == one["p_ttest"]
    assert many["n"] == one["n"] == a.height  # cases, not cases x seeds
    assert many["mean_a"] == pytest.approx(one["mean_a"]) and many["n_seeds_a"] == k


def test_seeds_are_averaged_per_case_before_pairing():
    rng = np.random.default_rng(1)
    n = 150
    users, targets = np.arange(1, n + 1), rng.integers(1, 50, n)
    ra = [rng.integers(0, 30, n) for _ in range(3)]
    rb = [np.maximum(r - rng.integers(-2, 5, n), 0) for r in ra[:2]]  # B has 2 seeds, A has 3
    res = paired_test([_frame(users, targets, r) for r in ra], [_frame(users, targets, r) for r in rb], "NDCG@10")
    va = np.round(np.mean([case_values("NDCG@10", r) for r in ra], axis=0), 12)  # float noise must not break ties
    vb = np.round(np.mean([case_values("NDCG@10", r) for r in rb], axis=0), 12)
    assert res["n"] == n
    assert res["p_wilcoxon"] == pytest.approx(stats.wilcoxon(vb, va).pvalue, rel=1e-9)
    assert res["p_ttest"] == pytest.approx(stats.ttest_rel(vb, va).pvalue, rel=1e-9)
    # seeds of one variant must hold the same cases
    with pytest.raises(InputError, match="same"):
        case_means([_frame(users, targets, ra[0]), _frame(users[:-1], targets[:-1], ra[1][:-1])], "HR@10")


def test_random_ties_are_honoured_in_paired_tests():
    # case 1: 0 greater, 1 tied -> expected rank 0.5, HR@1 = 1/2; case 2: 0 greater, 3 tied -> HR@1 = 1/4
    a = _frame([1, 2, 3], [5, 6, 7], [0.5, 1.5, 4.0], tied=[1, 3, 0])
    vals = case_means(a, "HR@1", ties="random")["value"].to_list()
    assert vals == [0.5, 0.25, 0.0]
    b = _frame([1, 2, 3], [5, 6, 7], [0.0, 0.0, 0.0], tied=[0, 0, 0])
    res = paired_test(a, b, "HR@1", ties="random")
    assert res["mean_a"] == pytest.approx(0.25) and res["mean_b"] == 1.0
    assert paired_test(a, b, "HR@1")["mean_a"] == pytest.approx(1 / 3)  # pessimistic reading of the same ranks


def test_holm_and_bh_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # BH: sorted 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04 -> running min from the top
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    # NaN = no test: kept, and not counted as a comparison
    np.testing.assert_allclose(adjust_pvalues([0.01, np.nan, 0.04], "holm"), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(adjust_pvalues([0.6, 0.7], "holm"), [1.0, 1.0])  # capped at 1
    assert adjust_pvalues(p, "none").tolist() == p
    with pytest.raises(InputError, match="adjustment"):
        adjust_pvalues(p, "sidak")


# ------------------------------------------------------------------ reports from finished run directories

def _fake_grid(seeds, metrics=("HR@10", "NDCG@10"), p_adjust="holm"):
    return GridConfig(name="fake", datasets={"d": "/nonexistent"}, backbones=["sasrec", "gru4rec"],
                      variants={"A": {}, "B": {}, "C": {}}, baseline="A", seeds=list(seeds), protocols=["full"],
                      metrics=list(metrics), p_adjust=p_adjust)


def _write_runs(grid, out, frames):
    """Run directories with metrics.json + ranks.parquet as training writes them (no dataset, no model)."""
    from mmseqrec.experiment import plan_runs

    for r in plan_runs(grid, out):
        f = frames[(r.variant, r.backbone)]
        r.run_dir.mkdir(parents=True, exist_ok=True)
        f.write_parquet(r.run_dir / "ranks.parquet")
        test = {m: float(case_values(m, f["rank"].to_numpy()).mean()) for m in grid.metrics}
        (r.run_dir / "metrics.json").write_text(json.dumps(
            {"protocol": "full", "exclude_history": False, "ties": "pessimistic", "scoring_dtype": "float32",
             "seed": r.seed, "valid": test, "test": {**test, "n_cases": f.height}}))


def _frames():
    out = {}
    for i, bb in enumerate(["sasrec", "gru4rec"]):
        a, b = _pair(seed=10 + i)
        _, c = _pair(seed=20 + i)
        out[("A", bb)], out[("B", bb)] = a, b
        out[("C", bb)] = a.with_columns(pl.Series("rank", c["rank"]))
    return out


def test_report_p_is_per_case_holm_adjusted_and_seed_copies_do_not_change_it(tmp_path):
    frames = _frames()
    one, three = _fake_grid([1]), _fake_grid([1, 2, 3])
    _write_runs(one, tmp_path / "one", frames)
    _write_runs(three, tmp_path / "three", frames)
    s1, s3 = summarise(one, tmp_path / "one"), summarise(three, tmp_path / "three")
    key = ["backbone", "variant", "metric"]
    s1, s3 = s1.sort(key), s3.sort(key)
    assert s3["n_seeds"].max() == 3 and s1["n_seeds"].max() == 1
    for col in ("p_wilcoxon", "p_ttest", "p_adj", "n_cases"):
        assert s1[col].to_list() == s3[col].to_list(), col
    # the raw p is the one-run paired test; the adjusted p is Holm over the table's 2 backbones x 2 variants x 2 metrics
    tested = s1.filter(pl.col("p_wilcoxon").is_not_null())
    assert tested.height == 8 and (tested["n_cases"] == 300).all()
    row = tested.filter((pl.col("backbone") == "gru4rec") & (pl.col("variant") == "B") & (pl.col("metric") == "NDCG@10"))
    ref = paired_test(frames[("A", "gru4rec")], frames[("B", "gru4rec")], "NDCG@10")
    assert row["p_wilcoxon"][0] == ref["p_wilcoxon"]
    np.testing.assert_allclose(tested["p_adj"].to_numpy(), adjust_pvalues(tested["p_wilcoxon"].to_numpy(), "holm"))
    assert s1.filter(pl.col("variant") == "A")["p_wilcoxon"].null_count() == 4  # the baseline is not tested

    bh = _fake_grid([1], p_adjust="bh")
    sb = summarise(bh, tmp_path / "one").filter(pl.col("p_wilcoxon").is_not_null())
    np.testing.assert_allclose(sb["p_adj"].to_numpy(), adjust_pvalues(sb["p_wilcoxon"].to_numpy(), "bh"))


def test_report_regenerates_from_finished_runs_without_data(tmp_path):
    """`experiment --report-only` reads only run directories: the dataset path need not exist."""
    import yaml

    from mmseqrec.cli import main

    grid = _fake_grid([1, 2])
    _write_runs(grid, tmp_path / "out", _frames())
    gf = tmp_path / "grid.yaml"
    gf.write_text(yaml.safe_dump(grid.model_dump()))
    try:
        main(["experiment", str(gf), "--out", str(tmp_path / "out"), "--report-only"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "p HR@10 (raw / Holm)" in md and "(8 comparisons, n = 300 paired cases)" in md
    assert "averaged over seeds first" in md
    csv = pl.read_csv(tmp_path / "out" / "results.csv")
    assert {"mean", "std", "n_seeds", "n_cases", "p_wilcoxon", "p_ttest", "p_adj", "p_adjust"} <= set(csv.columns)
    assert set(csv["p_adjust"].drop_nulls()) == {"holm"}


def test_ablation_plot_is_sorted_with_a_marked_baseline(tmp_path):
    """19 variants: horizontal bars sorted by value, baseline marked, split and protocol in the title."""
    import matplotlib

    matplotlib.use("Agg")
    from mmseqrec.experiment.report import _plot

    names = ["ID-only"] + [f"variant-{i:02d}-with-a-long-name" for i in range(18)]
    rng = np.random.default_rng(0)
    rows = [{"dataset": "ml", "backbone": bb, "variant": v, "protocol": "full", "metric": "NDCG@10",
             "mean": float(rng.uniform(0.02, 0.12)), "std": float(rng.uniform(0, 0.01)), "n_seeds": 3}
            for bb in ("sasrec", "bert4rec") for v in names]
    grid = GridConfig(name="abl", datasets={"ml": "x"}, variants={v: {} for v in names}, baseline="ID-only",
                      protocols=["full"], metrics=["NDCG@10"], report_split="valid")
    captured = {}
    import matplotlib.figure

    orig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **kw):
        captured["fig"] = self
        return orig(self, *a, **kw)

    matplotlib.figure.Figure.savefig = spy
    try:
        paths = _plot(grid, pl.DataFrame(rows), tmp_path)
    finally:
        matplotlib.figure.Figure.savefig = orig
    assert len(paths) == 1 and paths[0].read_bytes()[:4] == b"\x89PNG"
    fig = captured["fig"]
    assert "valid split" in fig._suptitle.get_text() and "protocol full" in fig._suptitle.get_text()
    for ax, bb in zip(fig.axes, ("sasrec", "bert4rec"), strict=True):
        labels = [t.get_text() for t in ax.get_yticklabels()]
        want = sorted((r for r in rows if r["backbone"] == bb), key=lambda r: r["mean"])
        assert labels == [r["variant"] + (" (baseline)" if r["variant"] == "ID-only" else "") for r in want]
        widths = [p.get_width() for p in ax.patches]
        assert widths == sorted(widths)
        colours = {tuple(p.get_facecolor()) for p in ax.patches}
        assert len(colours) == 2  # baseline vs variants, no cycling palette
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    bbox = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:  # the legend sits below the panels, never over bars
        assert bbox.y1 <= ax.get_window_extent(renderer).y0 + 1


def test_find_eval_matches_protocol_and_history_and_reads_older_names(tmp_path):
    from mmseqrec.evaluate import find_eval

    run = tmp_path / "run"
    run.mkdir()
    f = _frame([1, 2], [3, 4], [0, 5])
    f.write_parquet(run / "ranks.parquet")
    (run / "metrics.json").write_text(json.dumps({"protocol": "full", "exclude_history": False,
                                                  "test": {"HR@1": 0.5}}))
    # an older run's re-score: `eval-full.json` recording exclude_history = true (the name had no history part)
    f.write_parquet(run / "ranks-full.parquet")
    (run / "eval-full.json").write_text(json.dumps({"protocol": "full", "split": "test", "exclude_history": True,
                                                    "metrics": {"HR@1": 1.0}}))
    assert find_eval(run).path.name == "metrics.json"
    assert find_eval(run, "full", exclude_history=False).metrics("test") == {"HR@1": 0.5}
    old = find_eval(run, "full", exclude_history=True)
    assert old.path.name == "eval-full.json" and old.metrics("test") == {"HR@1": 1.0}
    assert old.ranks == {"test": run / "ranks-full.parquet"}
    assert find_eval(run, "sampled:5") is None and find_eval(run, "full:ties=random") is None
    # the new name wins over the old one
    (run / "eval-full-exclhist.json").write_text(json.dumps({"protocol": "full", "exclude_history": True,
                                                             "test": {"HR@1": 0.75}}))
    assert find_eval(run, "full", exclude_history=True).metrics("test") == {"HR@1": 0.75}


def test_report_references_pair_every_variant_with_a_baseline_on_its_own_backbone(tmp_path):
    """``references: [P]``: every variant of every backbone is also tested against P's runs (P ran on its own
    backbone, like the closed-form Pop); those comparisons join the table's Holm family."""
    base = _frames()[("A", "sasrec")]  # one dataset: every run scores the same (user, target) cases
    rng = np.random.default_rng(5)
    frames = {(v, bb): base.with_columns(pl.Series("rank", rng.integers(0, 40, base.height)))
              for v in "ABCP" for bb in ("sasrec", "gru4rec", "pop")}
    grid = GridConfig(name="refs", datasets={"d": "/nonexistent"}, backbones=["sasrec", "gru4rec"],
                      variants={"A": {}, "B": {}, "C": {}, "P": {}}, baseline="A", seeds=[1, 2],
                      protocols=["full"], metrics=["NDCG@10", "HR@10"], references=["P"],
                      variant_backbones={"P": ["pop"], "A": ["sasrec", "gru4rec"], "B": ["sasrec", "gru4rec"],
                                         "C": ["sasrec", "gru4rec"]})
    _write_runs(grid, tmp_path, frames)
    s = summarise(grid, tmp_path)
    first = s.filter(pl.col("metric") == "NDCG@10")
    vs = first.filter(pl.col("variant") != "P")
    assert vs.height == 6 and vs["p_vs_P"].null_count() == 0  # A, B, C on two backbones, all against P
    row = vs.filter((pl.col("backbone") == "gru4rec") & (pl.col("variant") == "B"))
    ref = paired_test(frames[("P", "pop")], frames[("B", "gru4rec")], "NDCG@10")
    assert row["p_vs_P"][0] == ref["p_wilcoxon"]
    assert s.filter(pl.col("metric") == "HR@10")["p_vs_P"].null_count() == s.filter(pl.col("metric") == "HR@10").height
    # one family: 2 backbones x 2 variants x 2 metrics against A, plus 6 against P
    raw = np.concatenate([s["p_wilcoxon"].drop_nulls().to_numpy(), vs["p_vs_P"].to_numpy()])
    adj = adjust_pvalues(raw, "holm")
    assert row["p_adj_vs_P"][0] == pytest.approx(adj[np.flatnonzero(raw == row["p_vs_P"][0])[0]])
    md = to_markdown(grid, s)
    assert "p NDCG@10 vs P (raw / Holm)" in md and "against **P**" in md
    with pytest.raises(ValueError, match="references names unknown variant"):
        GridConfig(datasets={"d": "x"}, variants={"A": {}}, references=["Q"])


def test_report_counts_a_pair_met_twice_once_in_the_holm_family(tmp_path):
    """A one-backbone baseline A and a reference P meet twice (P against A as the baseline, A against P as the
    reference): one hypothesis, so the Holm family has 3 members (B vs A, B vs P, A vs P), not 4."""
    base = _frames()[("A", "sasrec")]
    rng = np.random.default_rng(7)
    frames = {(v, bb): base.with_columns(pl.Series("rank", rng.integers(0, 40, base.height)))
              for v in "ABP" for bb in ("sasrec", "pop")}
    grid = GridConfig(name="twice", datasets={"d": "/nonexistent"}, backbones=["sasrec"],
                      variants={"A": {}, "B": {}, "P": {}}, baseline="A", seeds=[1], protocols=["full"],
                      metrics=["NDCG@10"], references=["P"],
                      variant_backbones={"P": ["pop"], "A": ["sasrec"], "B": ["sasrec"]})
    _write_runs(grid, tmp_path, frames)
    s = summarise(grid, tmp_path)
    p_row = s.filter(pl.col("variant") == "P")
    a_row = s.filter(pl.col("variant") == "A")
    b_row = s.filter(pl.col("variant") == "B")
    assert p_row["p_wilcoxon"][0] == a_row["p_vs_P"][0]  # the same test, seen from both sides
    raw = np.array([b_row["p_wilcoxon"][0], b_row["p_vs_P"][0], a_row["p_vs_P"][0]])
    adj = adjust_pvalues(raw, "holm")
    assert b_row["p_adj"][0] == pytest.approx(adj[0]) and b_row["p_adj_vs_P"][0] == pytest.approx(adj[1])
    assert p_row["p_adj"][0] == pytest.approx(adj[2]) and a_row["p_adj_vs_P"][0] == pytest.approx(adj[2])
    assert "(3 comparisons" in to_markdown(grid, s)
