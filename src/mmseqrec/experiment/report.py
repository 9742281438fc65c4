"""Results of an experiment grid: seed mean +- std, paired tests against the baseline variant with a
multiple-testing correction over each table, Markdown + CSV tables and one PNG plot per (protocol, metric).

Statistics (see :mod:`mmseqrec.evaluate.significance`): the table's mean +- std are over the per-seed metrics;
the p-values come from the paired test whose unit is the evaluation case (user, target), each case's metric
averaged over a variant's seeds first (general models, several targets per user: the unit is the user, with
the metric over the user's test items); raw p and p adjusted over all comparisons of one table (Holm by default)
are both written. The report only reads finished run directories: ``mmseqrec experiment GRID --report-only``
rebuilds it without training or scoring anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import InputError
from ..evaluate.evaluator import load_ranks
from ..evaluate.metrics import parse_metric
from ..evaluate.runfiles import EvalRecord, find_eval
from ..evaluate.significance import adjust_pvalues, paired_test
from ..fileio import atomic_path, atomic_write_text
from ..registry import model_spec
from .config import GridConfig
from .runner import RunRecord, plan_runs, protocol_slug

__all__ = ["collect", "summarise", "to_markdown", "write_report"]

_ADJ_NAME = {"holm": "Holm", "bh": "BH", "none": "none"}


def _records(grid: GridConfig, out: str | Path) -> list[tuple[RunRecord, str, EvalRecord]]:
    """(run, protocol, eval record) of every finished evaluation of the grid."""
    found = []
    for r in plan_runs(grid, out):
        if not (r.run_dir / "metrics.json").exists():
            continue
        for p in grid.protocols:
            rec = find_eval(r.run_dir, p)
            if rec is not None and rec.metrics(grid.report_split) is not None:
                found.append((r, p, rec))
    return found


def collect(grid: GridConfig, out: str | Path) -> pl.DataFrame:
    """One row per (run, protocol, metric) with the value on ``grid.report_split`` (long format)."""
    rows = []
    for r, p, rec in _records(grid, out):
        for metric, value in (rec.metrics(grid.report_split) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "n_cases":
                rows.append({"dataset": r.dataset, "variant": r.variant, "backbone": r.backbone, "seed": r.seed,
                             "protocol": p, "metric": metric, "value": float(value), "run_dir": str(r.run_dir)})
    schema = {"dataset": pl.Utf8, "variant": pl.Utf8, "backbone": pl.Utf8, "seed": pl.Int64, "protocol": pl.Utf8,
              "metric": pl.Utf8, "value": pl.Float64, "run_dir": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def _reference_group(groups: dict, ds: str, ref: str, bb: str, p: str) -> list[EvalRecord] | None:
    """The runs of reference variant ``ref`` to pair with backbone ``bb``: the same backbone when the reference
    ran on it, else the reference's only backbone (closed-form baselines run on their own), else none."""
    if (ds, ref, bb, p) in groups:
        return groups[(ds, ref, bb, p)]
    found = [recs for (d, v, _, q), recs in groups.items() if (d, v, q) == (ds, ref, p)]
    return found[0] if len(found) == 1 else None


def _tests(grid: GridConfig, out: str | Path) -> pl.DataFrame:
    """Paired test of every non-baseline (dataset, backbone, variant, protocol, metric) against the baseline on
    test ranks (seed means per case; the baseline's runs on the same backbone, else on its only backbone, as
    for references), and of every variant against each of ``grid.references`` (first metric
    only); column ``reference`` names the variant tested against. p is adjusted over each (dataset, protocol)
    table, all of its comparisons together."""
    groups: dict[tuple[str, str, str, str], list[EvalRecord]] = {}
    for r, p, rec in _records(grid, out):
        if "test" in rec.ranks:
            groups.setdefault((r.dataset, r.variant, r.backbone, p), []).append(rec)
    cache: dict[Path, pl.DataFrame] = {}

    def frames(recs: list[EvalRecord]) -> list[pl.DataFrame]:
        for rec in recs:
            if rec.ranks["test"] not in cache:
                cache[rec.ranks["test"]] = load_ranks(rec.ranks["test"])
        return [cache[rec.ranks["test"]] for rec in recs]

    rows = []

    def test(ds: str, bb: str, var: str, p: str, ref: str, base: list[EvalRecord], recs: list[EvalRecord],
             metrics: list[str]) -> None:
        multi = recs[0].multi_target  # general models: the user is the unit (targets pooled per user)
        if any(r.multi_target != multi for r in (*base, *recs)):
            raise InputError(f"{var!r} and {ref!r} on {ds} are not comparable: general (several targets per "
                             "user) and sequential runs in one comparison", field="references")
        for metric in metrics:
            kind = None if multi else parse_metric(metric)[0]
            res = paired_test(frames(base), frames(recs), metric, ties=recs[0].protocol.ties,
                              n_negatives=recs[0].n_negatives if kind == "AUC" else None, per_user=multi)
            # the same two run groups may meet twice (a variant against a one-backbone baseline, and that
            # baseline against the variant as a reference): one hypothesis, counted once in the Holm family
            pair = "|".join(sorted((str(id(base)), str(id(recs))))) + "|" + metric
            rows.append({"dataset": ds, "backbone": bb, "variant": var, "protocol": p, "metric": metric,
                         "reference": ref, "n_cases": res["n"], "p_wilcoxon": res["p_wilcoxon"],
                         "p_ttest": res["p_ttest"], "pair": pair})

    refs = [v for v in grid.references if v != grid.baseline]
    for (ds, var, bb, p), recs in groups.items():
        base = _reference_group(groups, ds, grid.baseline or "", bb, p) if var != grid.baseline else None
        if var != grid.baseline and base:
            test(ds, bb, var, p, grid.baseline or "", base, recs, grid.metrics)
        for ref in refs:
            ref_recs = _reference_group(groups, ds, ref, bb, p) if var != ref else None
            if ref_recs:
                test(ds, bb, var, p, ref, ref_recs, recs, grid.metrics[:1])
    schema = {"dataset": pl.Utf8, "backbone": pl.Utf8, "variant": pl.Utf8, "protocol": pl.Utf8, "metric": pl.Utf8,
              "reference": pl.Utf8, "n_cases": pl.Int64, "p_wilcoxon": pl.Float64, "p_ttest": pl.Float64,
              "pair": pl.Utf8}
    tests = pl.DataFrame(rows, schema=schema)
    adj = np.full(tests.height, np.nan)
    family = np.zeros(tests.height, dtype=np.int64)
    if tests.height:
        table = tests.select(pl.struct("dataset", "protocol").rank("dense")).to_series().to_numpy()
        p_raw = tests["p_wilcoxon"].to_numpy()
        pairs = tests["pair"].to_numpy()
        for t in np.unique(table):  # one family per results table, each distinct hypothesis once
            idx = np.flatnonzero(table == t)
            uniq, first, inverse = np.unique(pairs[idx], return_index=True, return_inverse=True)
            adj[idx] = adjust_pvalues(p_raw[idx][first], grid.p_adjust)[inverse]
            family[idx] = len(uniq)
    return tests.drop("pair").with_columns(pl.Series("p_adj", adj, dtype=pl.Float64),
                                           pl.lit(grid.p_adjust).alias("p_adjust"),
                                           pl.Series("n_family", family, dtype=pl.Int64))


def summarise(grid: GridConfig, out: str | Path) -> pl.DataFrame:
    """Seed mean, std and (test split) paired p-values vs the baseline for every (dataset, backbone, variant,
    protocol, metric): columns ``mean, std, n_seeds`` and, for test reports, ``n_cases, p_wilcoxon, p_ttest,
    p_adj, p_adjust`` (empty for the baseline)."""
    long = collect(grid, out)
    if long.is_empty():
        return long
    long = long.filter(pl.col("metric").is_in(grid.metrics))
    agg = (long.group_by("dataset", "backbone", "variant", "protocol", "metric", maintain_order=True)
           .agg(pl.col("value").mean().alias("mean"), pl.col("value").std(ddof=1).alias("std"),
                pl.col("value").count().alias("n_seeds")))
    if grid.report_split != "test":  # selection data: no test ranks are read, no p-values
        return agg
    keys = ["dataset", "backbone", "variant", "protocol", "metric"]
    tests = _tests(grid, out)
    out_df = agg.join(tests.filter(pl.col("reference") == (grid.baseline or "")).drop("reference", "n_family"),
                      on=keys, how="left", maintain_order="left")
    fam = tests.group_by("dataset", "protocol").agg(pl.col("n_family").max())
    out_df = out_df.join(fam, on=["dataset", "protocol"], how="left", maintain_order="left")
    for ref in (v for v in grid.references if v != grid.baseline):
        vs = tests.filter(pl.col("reference") == ref).select(
            *keys, pl.col("p_wilcoxon").alias(f"p_vs_{ref}"), pl.col("p_adj").alias(f"p_adj_vs_{ref}"))
        out_df = out_df.join(vs, on=keys, how="left", maintain_order="left")
    return out_df


def _fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"{p:.2g}"


def _fmt(mean: float, std: float | None) -> str:
    s = f"{mean:.4f}"
    if std is not None and not math.isnan(std):
        s += f" ± {std:.4f}"
    return s


def _seeds_note(n: int, planned: int) -> str:
    """`` (n of N seeds)`` for a row that has fewer finished seeds than the grid plans, else nothing."""
    return f" ({n} of {planned} seeds)" if n < planned else ""


def to_markdown(grid: GridConfig, summary: pl.DataFrame) -> str:
    """Markdown tables, one per (dataset, protocol): mean ± std per metric and, for test reports, a
    ``p (raw / adjusted)`` column per metric."""
    test = grid.report_split == "test"
    adj = _ADJ_NAME[grid.p_adjust]
    general = bool(summary.height) and all(getattr(model_spec(b), "general", False)
                                           for b in summary["backbone"].unique().to_list())
    if not test:
        lines = [f"# {grid.name}", "",
                 (f"**Validation** metrics (mean ± std over seeds {grid.seeds}) of the checkpoints selected on "
                  f"validation under `{grid.protocols[0]}`; for choosing options, so no test numbers are shown."), ""]
    else:
        lines = [f"# {grid.name}", "",
                 (f"Test metrics: mean ± std of the per-seed values over seeds {grid.seeds}. p: two-sided paired "
                  f"Wilcoxon signed-rank test against **{grid.baseline}** (same dataset, backbone and protocol)"
                  + ("".join(f", and for {grid.metrics[0]} against **{v}**" for v in grid.references
                             if v != grid.baseline) + " (any backbone)" if
                     [v for v in grid.references if v != grid.baseline] else "")
                  + ("; the unit is the user (the metric over the user's test items; general models, several "
                     "targets per user), each user's value averaged over seeds first" if general else
                     "; the unit is the test case (user, target), each case's metric averaged over seeds first")
                  + ", so n is the number of users whatever the number of seeds. Shown as raw p / p adjusted "
                  + ("(no adjustment)" if grid.p_adjust == "none" else
                     f"with {'Holm–Bonferroni' if adj == 'Holm' else 'Benjamini–Hochberg'} over all comparisons of "
                     "the table")
                  + f". Checkpoints selected on validation under `{grid.protocols[0]}`."), ""]
    for ds in summary["dataset"].unique(maintain_order=True):
        for proto in grid.protocols:
            sub = summary.filter((pl.col("dataset") == ds) & (pl.col("protocol") == proto))
            if sub.is_empty():
                continue
            head, rule = ["backbone", "variant"], ["---", "---"]
            for m in grid.metrics:
                head.append(m)
                rule.append("---")
                if test:
                    head.append(f"p {m} (raw / {adj})")
                    rule.append("---")
            refs = [v for v in grid.references if v != grid.baseline and f"p_vs_{v}" in sub.columns] if test else []
            for ref in refs:
                head.append(f"p {grid.metrics[0]} vs {ref} (raw / {adj})")
                rule.append("---")
            # distinct hypotheses in the Holm family (a pair of run groups met twice is counted once)
            n_tests = int(sub["n_family"].max() or 0) if test and "n_family" in sub.columns else 0
            ns = sorted(set(sub["n_cases"].drop_nulls().to_list())) if test else []
            cases = f", n = {'/'.join(str(n) for n in ns)} paired cases" if ns else ""
            lines += [f"## {ds} — protocol `{proto}`" + (f" ({n_tests} comparisons{cases})" if test else ""), "",
                      "| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
            for bb in sub["backbone"].unique(maintain_order=True):
                for var in sub.filter(pl.col("backbone") == bb)["variant"].unique(maintain_order=True):
                    cells = []
                    for m in grid.metrics:
                        r = sub.filter((pl.col("backbone") == bb) & (pl.col("variant") == var) & (pl.col("metric") == m))
                        row = r.row(0, named=True) if r.height else None
                        cells.append("—" if row is None else _fmt(row["mean"], row["std"])
                                     + _seeds_note(row["n_seeds"], len(grid.seeds)))
                        if test:
                            cells.append("—" if row is None or row["p_wilcoxon"] is None else
                                         f"{_fmt_p(row['p_wilcoxon'])} / {_fmt_p(row['p_adj'])}")
                    first = sub.filter((pl.col("backbone") == bb) & (pl.col("variant") == var)
                                       & (pl.col("metric") == grid.metrics[0]))
                    for ref in refs:
                        row = first.row(0, named=True) if first.height else None
                        cells.append("—" if row is None or row[f"p_vs_{ref}"] is None else
                                     f"{_fmt_p(row[f'p_vs_{ref}'])} / {_fmt_p(row[f'p_adj_vs_{ref}'])}")
                    lines.append(f"| {bb} | {var} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _plot(grid: GridConfig, summary: pl.DataFrame, out: Path) -> list[Path]:
    """One PNG per (dataset, protocol, metric): a panel per backbone with horizontal bars sorted by value (best on
    top), the baseline in its own colour and as a dashed line, seed std as error bars, the value at each bar's end,
    and a title naming the split and protocol. One colour for all other variants (the labels name them), so no
    colour repeats with another meaning; the legend sits below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    base_c, var_c = "#D55E00", "#0072B2"  # colour-blind-safe pair
    paths = []
    for ds in summary["dataset"].unique(maintain_order=True):
        for proto in grid.protocols:
            for metric in grid.metrics:
                sub = summary.filter((pl.col("dataset") == ds) & (pl.col("protocol") == proto)
                                     & (pl.col("metric") == metric))
                if sub.is_empty():
                    continue
                backbones = sub["backbone"].unique(maintain_order=True).to_list()
                n_var = max(sub.group_by("backbone").len()["len"].max(), 1)
                fig, axes = plt.subplots(1, len(backbones), figsize=(4.8 * len(backbones), 1.5 + 0.32 * n_var),
                                         squeeze=False)
                vmax = float((sub["mean"] + sub["std"].fill_null(0).fill_nan(0)).max() or 1.0)
                for ax, bb in zip(axes[0], backbones, strict=True):
                    part = sub.filter(pl.col("backbone") == bb).sort("mean")  # ascending: best ends on top
                    names = part["variant"].to_list()
                    means = part["mean"].to_numpy()
                    stds = np.nan_to_num(part["std"].fill_null(0).to_numpy().astype(np.float64))
                    is_base = np.array([v == grid.baseline for v in names])
                    y = np.arange(len(names))
                    ax.barh(y, means, xerr=stds, color=np.where(is_base, base_c, var_c), height=0.7,
                            error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
                    if is_base.any():
                        ax.axvline(means[is_base][0], color=base_c, ls="--", lw=1)
                    for yi, m, sd in zip(y, means, stds, strict=True):
                        ax.text(m + sd + 0.01 * vmax, yi, f"{m:.4f}", va="center", fontsize=7)
                    ax.set_yticks(y, [f"{v} (baseline)" if b else v for v, b in zip(names, is_base, strict=True)],
                                  fontsize=8)
                    for lab, b in zip(ax.get_yticklabels(), is_base, strict=True):
                        if b:
                            lab.set_fontweight("bold")
                    ax.set_xlim(0, vmax * 1.22)
                    ax.set_xlabel(metric)
                    ax.set_title(bb, fontsize=10)
                    ax.grid(axis="x", alpha=0.3)
                n_seeds = int(sub["n_seeds"].max())
                fig.suptitle(f"{ds} · {grid.report_split} split · protocol {proto} · {metric} "
                             f"(mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=11)
                fig.legend(handles=[Patch(color=base_c, label=f"baseline ({grid.baseline})"),
                                    Patch(color=var_c, label="variant")],
                           loc="lower center", ncol=2, frameon=False, fontsize=8)
                fig.tight_layout(rect=(0, 0.06 if n_var > 4 else 0.1, 1, 0.95))
                p = out / f"{ds}-{protocol_slug(proto)}-{metric.replace('@', '_at_')}.png"
                with atomic_path(p) as tmp:
                    fig.savefig(tmp, dpi=120, format="png")
                plt.close(fig)
                paths.append(p)
    return paths


def write_report(grid: GridConfig, out: str | Path) -> dict[str, Path | list[Path]]:
    """Write ``results.md``, ``results.csv`` and plots into ``out`` (``results-valid.*`` and ``plots-valid/``
    when ``grid.report_split`` is ``valid``); returns their paths."""
    out = Path(out)
    summary = summarise(grid, out)
    md = to_markdown(grid, summary) if not summary.is_empty() else f"# {grid.name}\n\nNo finished runs yet.\n"
    sfx = "" if grid.report_split == "test" else f"-{grid.report_split}"
    atomic_write_text(out / f"results{sfx}.md", md)
    with atomic_path(out / f"results{sfx}.csv") as tmp:
        summary.write_csv(tmp)
    plots = _plot(grid, summary, out / f"plots{sfx}") if not summary.is_empty() else []
    return {"markdown": out / f"results{sfx}.md", "csv": out / f"results{sfx}.csv", "plots": plots}
