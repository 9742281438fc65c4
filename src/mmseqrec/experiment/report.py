"""Results of an experiment grid: mean +- std over seeds, paired tests against the baseline variant, Markdown +
CSV tables and one PNG plot per (protocol, metric)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..fileio import atomic_path, atomic_write_text
from .config import GridConfig
from .runner import RunRecord, plan_runs, protocol_slug

__all__ = ["collect", "per_case_values", "paired_pvalues", "summarise", "write_report"]

def per_case_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-case metric values from 0-based pessimistic ranks (``HR@K``, ``NDCG@K``, ``MRR@K``)."""
    from ..evaluate.metrics import case_values

    return case_values(metric, np.asarray(ranks))


def _ranks_path(run_dir: Path, protocol: str, primary: str) -> Path:
    return run_dir / ("ranks.parquet" if protocol == primary else f"ranks-{protocol_slug(protocol)}.parquet")


def _metrics(run_dir: Path, protocol: str, primary: str) -> dict[str, Any] | None:
    p = run_dir / ("metrics.json" if protocol == primary else f"eval-{protocol_slug(protocol)}.json")
    return json.loads(p.read_text()) if p.exists() else None


def collect(grid: GridConfig, out: str | Path) -> pl.DataFrame:
    """One row per (run, protocol) with every metric of ``grid.report_split`` (long format: metric, value)."""
    rows = []
    primary = grid.protocols[0]
    for r in plan_runs(grid, out):
        for p in grid.protocols:
            m = _metrics(r.run_dir, p, primary)
            if m is None:
                continue
            for metric, value in m[grid.report_split].items():
                if isinstance(value, (int, float)) and metric != "n_cases":
                    rows.append({"dataset": r.dataset, "variant": r.variant, "backbone": r.backbone, "seed": r.seed,
                                 "protocol": p, "metric": metric, "value": float(value),
                                 "run_dir": str(r.run_dir)})
    schema = {"dataset": pl.Utf8, "variant": pl.Utf8, "backbone": pl.Utf8, "seed": pl.Int64, "protocol": pl.Utf8,
              "metric": pl.Utf8, "value": pl.Float64, "run_dir": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def paired_pvalues(runs_a: list[RunRecord], runs_b: list[RunRecord], protocol: str, primary: str,
                   metric: str) -> dict[str, float]:
    """Wilcoxon signed-rank and paired t-test over per-case values pooled across matching seeds.

    Cases are paired on (seed, user, target); runs of a seed missing on either side are left out.
    """
    from scipy import stats

    b_by_seed = {r.seed: r for r in runs_b}
    xa, xb = [], []
    for ra in runs_a:
        rb = b_by_seed.get(ra.seed)
        if rb is None:
            continue
        pa, pb = _ranks_path(ra.run_dir, protocol, primary), _ranks_path(rb.run_dir, protocol, primary)
        if not (pa.exists() and pb.exists()):
            continue
        fa = pl.read_parquet(pa).select("user", "target", pl.col("rank").alias("ra"))
        fb = pl.read_parquet(pb).select("user", "target", pl.col("rank").alias("rb"))
        j = fa.join(fb, on=["user", "target"], how="inner")
        if j.height != fa.height or j.height != fb.height:
            raise ValueError(f"runs {ra.run_dir} and {rb.run_dir} evaluated different cases; cannot pair them")
        xa.append(per_case_values(j["ra"].to_numpy(), metric))
        xb.append(per_case_values(j["rb"].to_numpy(), metric))
    if not xa:
        return {"p_wilcoxon": math.nan, "p_ttest": math.nan, "n": 0}
    a, b = np.concatenate(xa), np.concatenate(xb)
    d = a - b
    if np.allclose(d, 0):
        return {"p_wilcoxon": 1.0, "p_ttest": 1.0, "n": int(a.size)}
    return {"p_wilcoxon": float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue),
            "p_ttest": float(stats.ttest_rel(a, b).pvalue), "n": int(a.size)}


def summarise(grid: GridConfig, out: str | Path) -> pl.DataFrame:
    """Mean, std and paired p-values vs the baseline for every (dataset, backbone, variant, protocol, metric)."""
    long = collect(grid, out)
    if long.is_empty():
        return long
    long = long.filter(pl.col("metric").is_in(grid.metrics))
    agg = (long.group_by("dataset", "backbone", "variant", "protocol", "metric", maintain_order=True)
           .agg(pl.col("value").mean().alias("mean"), pl.col("value").std(ddof=1).alias("std"),
                pl.col("value").count().alias("n_seeds")))
    runs = plan_runs(grid, out)
    by_key: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in runs:
        by_key.setdefault((r.dataset, r.variant, r.backbone), []).append(r)
    pw, pt = [], []
    for row in agg.iter_rows(named=True):
        if row["variant"] == grid.baseline or grid.report_split != "test":  # per-user ranks exist for test only
            pw.append(None)
            pt.append(None)
            continue
        res = paired_pvalues(by_key[(row["dataset"], row["variant"], row["backbone"])],
                             by_key.get((row["dataset"], grid.baseline, row["backbone"]), []),
                             row["protocol"], grid.protocols[0], row["metric"])
        pw.append(res["p_wilcoxon"])
        pt.append(res["p_ttest"])
    return agg.with_columns(pl.Series("p_wilcoxon", pw, dtype=pl.Float64), pl.Series("p_ttest", pt, dtype=pl.Float64))


def _fmt(mean: float, std: float | None, p: float | None) -> str:
    s = f"{mean:.4f}"
    if std is not None and not math.isnan(std):
        s += f" ± {std:.4f}"
    if p is not None and not math.isnan(p):
        s += f" (p={p:.2g})"
    return s


def to_markdown(grid: GridConfig, summary: pl.DataFrame) -> str:
    if grid.report_split == "valid":
        lines = [f"# {grid.name}", "",
                 (f"**Validation** metrics (mean ± std over seeds {grid.seeds}) of the checkpoints selected on "
                  f"validation under `{grid.protocols[0]}`; for choosing options, so no test numbers are shown."), ""]
    else:
        lines = [f"# {grid.name}", "",
                 (f"Mean ± std over seeds {grid.seeds}; p = paired Wilcoxon signed-rank test against "
                  f"**{grid.baseline}** on per-user values (same backbone, dataset and protocol, seeds pooled). "
                  f"Checkpoints selected on validation under `{grid.protocols[0]}`; test numbers only reported."), ""]
    for ds in summary["dataset"].unique(maintain_order=True):
        for proto in grid.protocols:
            sub = summary.filter((pl.col("dataset") == ds) & (pl.col("protocol") == proto))
            if sub.is_empty():
                continue
            lines += [f"## {ds} — protocol `{proto}`", "",
                      "| backbone | variant | " + " | ".join(grid.metrics) + " |",
                      "|---|---|" + "---|" * len(grid.metrics)]
            for bb in sub["backbone"].unique(maintain_order=True):
                for var in sub.filter(pl.col("backbone") == bb)["variant"].unique(maintain_order=True):
                    cells = []
                    for m in grid.metrics:
                        r = sub.filter((pl.col("backbone") == bb) & (pl.col("variant") == var) & (pl.col("metric") == m))
                        if r.is_empty():
                            cells.append("—")
                        else:
                            row = r.row(0, named=True)
                            cells.append(_fmt(row["mean"], row["std"], row["p_wilcoxon"]))
                    lines.append(f"| {bb} | {var} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _plot(grid: GridConfig, summary: pl.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ds in summary["dataset"].unique(maintain_order=True):
        for proto in grid.protocols:
            for metric in grid.metrics:
                sub = summary.filter((pl.col("dataset") == ds) & (pl.col("protocol") == proto) & (pl.col("metric") == metric))
                if sub.is_empty():
                    continue
                backbones = sub["backbone"].unique(maintain_order=True).to_list()
                variants = sub["variant"].unique(maintain_order=True).to_list()
                width = 0.8 / max(len(variants), 1)
                fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(backbones), 3.4))
                for i, var in enumerate(variants):
                    means, stds = [], []
                    for bb in backbones:
                        r = sub.filter((pl.col("backbone") == bb) & (pl.col("variant") == var))
                        means.append(r["mean"][0] if r.height else np.nan)
                        s = r["std"][0] if r.height else None
                        stds.append(0.0 if s is None or math.isnan(s) else s)
                    x = np.arange(len(backbones)) + (i - (len(variants) - 1) / 2) * width
                    ax.bar(x, means, width, yerr=stds, capsize=3, label=var)
                ax.set_xticks(np.arange(len(backbones)), backbones)
                ax.set_ylabel(metric)
                ax.set_title(f"{ds} · {proto} · {metric}")
                ax.legend(fontsize=7, frameon=False)
                fig.tight_layout()
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
