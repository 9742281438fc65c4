"""``mmseqrec report ... --out report.html``: one self-contained HTML file (CSS, plots and item images inline).

Sections: the results table (an experiment folder's ``results.csv`` as written by
:func:`mmseqrec.experiment.report.write_report`, with its Holm/BH-adjusted paired p-values; for plain run
directories the seed aggregate of :func:`mmseqrec.evaluate.report.aggregate_runs` and the paired comparison of
:func:`mmseqrec.evaluate.report.compare_runs` against the first run), training curves from each run's
``log.jsonl``, the long-tail breakdown (:func:`mmseqrec.evaluate.longtail.longtail_for_split`) and example
recommendations with item images, made by the same recommender as ``mmseqrec recommend`` and ``mmseqrec serve``
(:func:`~mmseqrec.serve.recommend.load_recommender`; LLM-recommender runs re-rank the training-popularity top-20,
labelled). Nothing is re-scored: numbers come from the run files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InputError
from ..fileio import atomic_write_text

__all__ = ["find_runs", "write_html_report"]

_CSS = """
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d232b;max-width:1200px;margin:24px auto;
padding:0 20px}h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #dde2e8;padding-bottom:4px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}th,td{border:1px solid #dde2e8;
padding:3px 8px;text-align:right}th{background:#f3f5f8}td.l,th.l{text-align:left}.note{color:#5f6b7a;font-size:12.5px}
.sig{color:#0a7a2f;font-weight:600}.signeg{color:#b00020;font-weight:600}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{width:150px;border:1px solid #dde2e8;border-radius:8px;overflow:hidden;font-size:12px}.card img{width:100%;
height:100px;object-fit:contain;background:#eef0f3;display:block}.card div{padding:4px 6px}.card.hit{outline:3px solid
#0a7a2f}.hist img{width:36px;height:36px;object-fit:contain;border-radius:4px;background:#eef0f3;margin-right:3px}
.ex{margin:10px 0 22px}img.plot{max-width:100%}
"""


def find_runs(path: Path) -> list[Path]:
    """Evaluated run directories at or under ``path`` (``metrics.json`` + ``config.yaml``), sorted."""
    if (path / "metrics.json").exists() and (path / "config.yaml").exists():
        return [path]
    return sorted(p.parent for p in path.rglob("metrics.json") if (p.parent / "config.yaml").exists())


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{nd}f}" if isinstance(x, float) else _e(x)


def _p(p: Any) -> str:
    return "—" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def _table(df: pl.DataFrame, left: int = 1) -> str:
    head = "".join(f"<th class='l'>{_e(c)}</th>" if i < left else f"<th>{_e(c)}</th>"
                   for i, c in enumerate(df.columns))
    rows = []
    for r in df.iter_rows():
        rows.append("<tr>" + "".join(f"<td class='l'>{_num(v)}</td>" if i < left else f"<td>{_num(v)}</td>"
                                     for i, v in enumerate(r)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------- results tables
def _experiment_table(folder: Path) -> str:
    """An experiment's ``results.csv`` (written by ``mmseqrec experiment``) as tables with significance marks."""
    df = pl.read_csv(folder / "results.csv")
    out = [f"<h3>Experiment {_e(folder.name)}</h3>"]
    if "p_adj" not in df.columns:
        out.append("<p class='note'>validation report: no test numbers, no p-values.</p>")
    adj = str(df["p_adjust"].drop_nulls()[0]) if "p_adjust" in df.columns and df["p_adjust"].drop_nulls().len() \
        else "holm"
    out.append(f"<p class='note'>mean ± std over seeds; p: paired Wilcoxon against the grid's baseline (unit: the "
               f"test case), adjusted with {_e(adj)} over each table; <span class='sig'>▲</span>/<span "
               f"class='signeg'>▼</span>: adjusted p &lt; 0.05, better/worse than the baseline.</p>")
    base = {}
    for r in df.filter(pl.col("p_wilcoxon").is_null() if "p_wilcoxon" in df.columns else pl.lit(True)).iter_rows(
            named=True):
        base[(r["dataset"], r["backbone"], r["protocol"], r["metric"])] = r["mean"]
    for (ds, proto), sub in df.group_by("dataset", "protocol", maintain_order=True):
        metrics = sub["metric"].unique(maintain_order=True).to_list()
        head = "<tr><th class='l'>backbone</th><th class='l'>variant</th>" + "".join(
            f"<th>{_e(m)}</th>" for m in metrics) + "</tr>"
        rows = []
        for (bb, var), part in sub.group_by("backbone", "variant", maintain_order=True):
            cells = []
            for m in metrics:
                r = part.filter(pl.col("metric") == m)
                if not r.height:
                    cells.append("<td>—</td>")
                    continue
                row = r.row(0, named=True)
                txt = _num(row["mean"]) + (f" ± {_num(row['std'])}" if row.get("std") is not None else "")
                pa = row.get("p_adj")
                mark = ""
                if pa is not None and not math.isnan(pa) and pa < 0.05:
                    b = base.get((ds, bb, proto, m))
                    up = b is None or row["mean"] > b
                    mark = f" <span class='{'sig' if up else 'signeg'}'>{'▲' if up else '▼'}</span>"
                p_txt = f"<br><span class='note'>p {_p(row.get('p_wilcoxon'))} / {_p(pa)}</span>" \
                    if row.get("p_wilcoxon") is not None else ""
                cells.append(f"<td>{txt}{mark}{p_txt}</td>")
            rows.append(f"<tr><td class='l'>{_e(bb)}</td><td class='l'>{_e(var)}</td>{''.join(cells)}</tr>")
        out.append(f"<p><b>{_e(ds)}</b> — protocol <code>{_e(proto)}</code></p><table>{head}{''.join(rows)}</table>")
    return "\n".join(out)


def _runs_table(runs: list[Path]) -> str:
    """Seed aggregates of plain runs, and each run against the first with paired tests (Holm over metrics)."""
    from ..evaluate.report import aggregate_runs, compare_runs, load_run_result

    groups = aggregate_runs(list(runs), by_config=True)
    metrics = [m for m in groups[0]["metrics"] if m != "n_cases"]
    out = [("<p class='note'>Test metrics; mean ± std over the runs of one config that differ only by seed (a "
            "single run has no std).</p>")]
    head = "<tr><th class='l'>runs</th><th class='l'>protocol</th>" + "".join(f"<th>{_e(m)}</th>" for m in metrics)
    rows = []
    for g in groups:
        cells = []
        for m in metrics:
            mean, std = g["metrics"].get(m, (None, None))
            cells.append(f"<td>{_num(mean)}" + (f" ± {_num(std)}" if g["n_runs"] > 1 else "") + "</td>")
        rows.append(f"<tr><td class='l'>{_e(', '.join(g['runs']))}</td><td class='l'>{_e(g['protocol'])}</td>"
                    f"{''.join(cells)}</tr>")
    out.append(f"<table>{head}</tr>{''.join(rows)}</table>")
    if len(runs) > 1:
        a = load_run_result(runs[0])
        out.append(f"<h3>Paired comparison against {_e(a.name)}</h3><p class='note'>delta = run − {_e(a.name)}; p: "
                   "Wilcoxon signed-rank over test cases (raw / Holm-adjusted over the metrics of each comparison), "
                   "t-test; <span class='sig'>▲</span>/<span class='signeg'>▼</span>: adjusted p &lt; 0.05.</p>")
        for b_path in runs[1:]:
            try:
                rows = compare_runs(a, load_run_result(b_path))
            except InputError as exc:
                out.append(f"<p class='note'>{_e(b_path.name)}: not comparable ({_e(exc)})</p>")
                continue
            body = []
            for r in rows:
                mark = ""
                if r["p_adj"] < 0.05:
                    mark = " <span class='sig'>▲</span>" if r["delta"] > 0 else " <span class='signeg'>▼</span>"
                body.append(f"<tr><td class='l'>{_e(r['metric'])}</td><td>{_num(r['a'])}</td><td>{_num(r['b'])}</td>"
                            f"<td>{r['delta']:+.4f}{mark}</td><td>{_p(r['p_wilcoxon'])} / {_p(r['p_adj'])}</td>"
                            f"<td>{_p(r['p_ttest'])}</td><td>{r['n']}</td></tr>")
            out.append(f"<p><b>{_e(b_path.name)}</b></p><table><tr><th class='l'>metric</th><th>{_e(a.name)}</th>"
                       f"<th>{_e(b_path.name)}</th><th>delta</th><th>p Wilcoxon (raw / Holm)</th><th>p t-test</th>"
                       f"<th>n</th></tr>{''.join(body)}</table>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- curves, long tail
def _train_loss(row: dict) -> float | None:
    """The training loss of a ``log.jsonl`` line: the trainer's ``loss.rec`` (or ``loss.loss``), or an LLM
    recommender's ``sft_loss``."""
    loss = row.get("loss")
    if isinstance(loss, dict):
        return loss.get("rec", loss.get("loss"))
    return row.get("sft_loss", loss)


def _curves(runs: list[Path], names: dict[Path, str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {}
    for r in runs:
        p = r / "log.jsonl"
        if p.exists():
            rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            if rows:
                logs[r] = rows
    if not logs:
        return "<p class='note'>No log.jsonl in the runs.</p>"
    metric = next((m for m in ("NDCG@10", "HR@10") if all(m in (rows[-1].get("valid") or {}) for rows in
                                                          logs.values())), None)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(11 if metric else 5.5, 3.4), squeeze=False)
    for r, rows in logs.items():
        ep = [x["epoch"] for x in rows]
        axes[0][0].plot(ep, [_train_loss(x) for x in rows], marker=".", label=names[r])
        if metric:
            axes[0][1].plot(ep, [(x.get("valid") or {}).get(metric) for x in rows], marker=".", label=names[r])
    axes[0][0].set(xlabel="epoch", ylabel="training loss (rec)", title="training loss")
    if metric:
        axes[0][1].set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric}")
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    uri = _png(fig)
    plt.close(fig)
    return f"<img class='plot' alt='training curves' src='{uri}'>"


def _longtail(run: Path, preset: str) -> str:
    from ..data.dataset import DatasetDir
    from ..data.split import leave_one_out
    from ..evaluate.longtail import longtail_for_split
    from ..train.config import load_experiment
    from .llmrec import is_llmrec_run

    if not (run / "ranks.parquet").exists():
        return f"<p class='note'>{_e(run.name)}: no ranks.parquet.</p>"
    if is_llmrec_run(run):
        return (f"<p class='note'>{_e(run.name)}: an LLM-recommender run, ranked on its candidate lists (users split "
                "8:1:1), not on the leave-one-out split the breakdown uses.</p>")
    cfg = load_experiment(run / "config.yaml")
    if cfg.data.path is None or not Path(cfg.data.path).exists():
        return f"<p class='note'>{_e(run.name)}: dataset {_e(cfg.data.path)} not found.</p>"
    split = leave_one_out(DatasetDir(cfg.data.path).sequences, cfg.data.min_len)
    df = longtail_for_split(pl.read_parquet(run / "ranks.parquet"), split, preset, (10,))
    return f"<p><b>{_e(run.name)}</b></p>" + _table(df, left=3)


# ---------------------------------------------------------------------------------------------- examples
def _examples(runs: list[Path], names: dict[Path, str], n_users: int, k: int) -> str:
    from .catalog import Catalog
    from .recommend import load_recommender

    recs: list[tuple[Path, Any]] = []
    for r in runs[:4]:
        try:
            recs.append((r, load_recommender(r)))
        except Exception as exc:  # noqa: BLE001 - a run that cannot be loaded is named, the report goes on
            recs.append((r, exc))
    loaded = [(r, x) for r, x in recs if not isinstance(x, Exception)]
    out = [f"<p class='note'>{_e(names[r])}: could not load ({_e(x)})</p>" for r, x in recs
           if isinstance(x, Exception)]
    if not loaded:
        return "\n".join(out)
    cat = Catalog(loaded[0][1].run.dataset)
    users = list(range(1, min(len(cat.user_ids), n_users) + 1))
    out.append(f"<p class='note'>Histories of the first {len(users)} users (all but their last item); top-{k} "
               "of each run with its history excluded; a green outline marks the held-out next item.</p>")

    def card(item_id: str, score: float | None, hit: bool) -> str:
        i = cat.index[item_id]
        uri = cat.image_data_uri(i)
        img = f"<img alt='' src='{uri}'>" if uri else ""
        desc = next(iter(cat.mllm.get(i, {}).values()), None) or (cat.text.get("description") or [None] * i)[i - 1]
        sc = f" · {score:.3f}" if score is not None else ""
        return (f"<div class='card{' hit' if hit else ''}'>{img}<div><b>{_e(cat.titles[i - 1])}</b><br>"
                f"<span class='note'>{_e(item_id)}{sc}</span>"
                + (f"<br><span class='note'>{_e(str(desc)[:140])}</span>" if desc else "") + "</div></div>")

    for u in users:
        info = cat.user(u)
        hist = info["history"][-10:]
        uris = [(h, cat.image_data_uri(cat.index[h])) for h in hist]
        thumbs = "".join(f"<img title='{_e(cat.titles[cat.index[h] - 1])}' alt='' src='{u}'>" if u else
                         f"<span class='note'>{_e(cat.titles[cat.index[h] - 1])}; </span>" for h, u in uris)
        block = [(f"<div class='ex'><h3>user {_e(info['user_id'])}</h3><div class='hist'>last {len(hist)} history "
                  f"items: {thumbs}</div>")]
        for task, text in info["mllm"].items():
            block.append(f"<p class='note'><b>{_e(task)}</b>: {_e(text[:300])}</p>")
        for r, rec in loaded:
            try:
                extra = {"user": info["user_id"]} if getattr(rec, "takes_user", False) else {}
                res = rec(info["history"], k, **extra)
            except InputError as exc:
                block.append(f"<p class='note'>{_e(names[r])}: {_e(exc)}</p>")
                continue
            stage = (f" <span class='note'>(re-rank of {_e(res.candidates['stage'])} top-{res.candidates['n']})"
                     "</span>" if res.candidates else "")
            block.append(f"<p><b>{_e(names[r])}</b>{stage}</p><div class='cards'>"
                         + "".join(card(i, s, i == info["held_out"]) for i, _, s in res.items) + "</div>")
        out.append("".join(block) + "</div>")
    return "\n".join(out)


def write_html_report(paths: list[Path], out: Path, *, n_users: int = 3, k: int = 6,
                      preset: str = "llmesr-beauty", title: str | None = None) -> Path:
    """Write the report of ``paths`` (run directories and/or experiment folders) to ``out`` atomically."""
    experiments = [p for p in paths if (p / "results.csv").exists()]
    runs: list[Path] = []
    for p in paths:
        found = find_runs(p)
        if not found:
            raise InputError("neither an evaluated run directory (metrics.json + config.yaml) nor an experiment "
                             "folder with runs", file=p)
        runs += [r for r in found if r not in runs]
    names = {r: (str(r.relative_to(p)) if p in r.parents else r.name) for p in paths for r in runs
             if r == p or p in r.parents}
    sections = [f"<h1>{_e(title or 'mmseqrec report')}</h1><p class='note'>{len(runs)} run(s): "
                + ", ".join(_e(names[r]) for r in runs) + "</p>", "<h2>Results</h2>"]
    for e in experiments:
        sections.append(_experiment_table(e))
    plain = [r for r in runs if not any(e in r.parents for e in experiments)]
    if plain:
        sections.append(_runs_table(plain))
    shown = runs[:12]
    sections += ["<h2>Training curves</h2>", _curves(shown, names), "<h2>Long-tail breakdown</h2>",
                 (f"<p class='note'>Test ranks by training-sequence length and by target popularity (preset "
                  f"{_e(preset)}, LLM-ESR's strict '&lt;' groups, popularity on training interactions).</p>")]
    sections += [_longtail(r, preset) for r in shown]
    sections += ["<h2>Example recommendations</h2>", _examples(shown, names, n_users, k)]
    doc = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title or 'mmseqrec report')}"
           f"</title><style>{_CSS}</style></head><body>{''.join(sections)}</body></html>")
    atomic_write_text(out, doc)
    return out
