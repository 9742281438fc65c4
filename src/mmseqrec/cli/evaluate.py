"""``mmseqrec compare`` and ``mmseqrec report``: thin wiring over :mod:`mmseqrec.evaluate.report`.

(``mmseqrec evaluate RUN`` itself lives in ``cli/train.py``.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def register(app: typer.Typer) -> None:
    """Add the ``compare`` and ``report`` commands to ``app``."""

    @app.command("compare")
    def compare_cmd(
        run_a: Annotated[Path, typer.Argument(help="Baseline run directory (A).")],
        run_b: Annotated[Path, typer.Argument(help="Run directory to compare against A (B).")],
        metric: Annotated[list[str] | None, typer.Option(
            "--metric", "-m", help="Metric(s) to test, e.g. NDCG@10 (repeatable; default: all).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
        protocol: Annotated[str | None, typer.Option(
            "--protocol", help="Compare the runs scored under this protocol (metrics.json, or the re-score "
                               "RUN/eval-<protocol>[-exclhist].json written by `mmseqrec evaluate`; default: the "
                               "protocol each run was trained with).")] = None,
        exclude_history: Annotated[bool | None, typer.Option(
            "--exclude-history/--include-history",
            help="Compare the scores with the user's earlier items removed from (or kept in) the candidates "
                 "(default: each run's own setting). Refuses when a run was not scored so.")] = None,
        p_adjust: Annotated[str, typer.Option(
            "--p-adjust", help="Adjust the Wilcoxon p over the metrics compared: holm | bh | none.")] = "holm",
    ) -> None:
        """Paired comparison of two runs' test ranks: deltas (B - A) with Wilcoxon (raw and adjusted) and
        t-test p-values; the unit is the test case (user, target), as in `mmseqrec experiment` reports."""
        from ..errors import InputError
        from ..evaluate.report import compare_runs, load_run_result

        if p_adjust not in ("holm", "bh", "none"):
            raise InputError(f"unknown adjustment {p_adjust!r}; choose holm, bh or none", field="--p-adjust")
        a = load_run_result(run_a, protocol, exclude_history)
        b = load_run_result(run_b, protocol, exclude_history)
        rows = compare_runs(a, b, metric or None, p_adjust=p_adjust)
        if as_json:
            typer.echo(json.dumps({"a": str(run_a), "b": str(run_b), "protocol": a.setting, "rows": rows},
                                  indent=2))
            return
        table = Table(title=f"{a.name} (A) vs {b.name} (B) — {a.setting}, n={rows[0]['n']} paired cases")
        adj = {"holm": "Holm", "bh": "BH", "none": "unadjusted"}[p_adjust]
        for col in ("metric", "A", "B", "delta", "p (Wilcoxon)", f"p ({adj})", "p (t-test)"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for r in rows:
            style = "green" if r["delta"] > 0 and r["p_adj"] < 0.05 else (
                "red" if r["delta"] < 0 and r["p_adj"] < 0.05 else None)
            table.add_row(r["metric"], f"{r['a']:.4f}", f"{r['b']:.4f}", f"{r['delta']:+.4f}",
                          _fmt_p(r["p_wilcoxon"]), _fmt_p(r["p_adj"]), _fmt_p(r["p_ttest"]), style=style)
        Console(emoji=False, width=120).print(table)

    @app.command("report")
    def report_cmd(
        runs: Annotated[list[Path], typer.Argument(
            help="Run directories (e.g. one per seed); with --out also experiment folders.")],
        one_group: Annotated[bool, typer.Option(
            "--one-group", help="Aggregate all runs together instead of grouping by config minus seed.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Write one self-contained HTML report here instead (runs and/or experiment "
                                "folders: results table with significance, training curves, long-tail breakdown, "
                                "example recommendations with images).")] = None,
    ) -> None:
        """Mean +- std of test metrics across runs of the same config (differing only by seed); with --out, an
        HTML report of runs and experiment folders."""
        from ..evaluate.report import aggregate_runs

        if out is not None:
            from ..serve.html_report import write_html_report

            typer.echo(f"wrote {write_html_report(list(runs), out)}")
            return
        groups = aggregate_runs(list(runs), by_config=not one_group)
        if as_json:
            typer.echo(json.dumps(groups, indent=2))
            return
        console = Console(emoji=False, width=120)
        for g in groups:
            table = Table(title=f"{g['n_runs']} run(s): {', '.join(g['runs'])} — {g['protocol']}")
            table.add_column("metric")
            table.add_column("mean ± std", justify="right")
            for name, (mean, std) in g["metrics"].items():
                if name == "n_cases":
                    continue
                table.add_row(name, f"{mean:.4f} ± {std:.4f}")
            console.print(table)

    @app.command("longtail")
    def longtail_cmd(
        run: Annotated[Path, typer.Argument(help="Run directory (reads ranks.parquet, config.yaml, the dataset).")],
        preset: Annotated[str, typer.Option(
            help="Thresholds: llmesr-yelp (12/13), llmesr-fashion (3/4), llmesr-beauty (9/4), llmesr-5group.")]
            = "llmesr-beauty",
        user_thresholds: Annotated[str | None, typer.Option(
            help="Override: comma-separated training-length thresholds, e.g. 5,10,20.")] = None,
        item_thresholds: Annotated[str | None, typer.Option(
            help="Override: comma-separated target-popularity thresholds.")] = None,
        popularity: Annotated[str, typer.Option(
            help="Count popularity on 'train' interactions (default) or 'all' (LLM-ESR's way).")] = "train",
        k: Annotated[list[int] | None, typer.Option("-k", help="Cut-offs (repeatable).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Long-tail breakdown of a run's test ranks: metrics per user-length group and per item-popularity group
        (groups use LLM-ESR's strict '<' rule; lengths are training-sequence lengths)."""
        import polars as pl

        from ..data.dataset import DatasetDir
        from ..data.split import leave_one_out
        from ..errors import InputError
        from ..evaluate.longtail import LongTailConfig, longtail_for_split
        from ..train.config import load_experiment

        if not (run / "ranks.parquet").exists() or not (run / "config.yaml").exists():
            raise InputError("not a trained run directory (needs ranks.parquet and config.yaml)", file=run)
        from ..train.run import check_data

        cfg = load_experiment(run / "config.yaml")
        ds = DatasetDir(cfg.data.path)
        check_data(run, ds)  # the dataset at the recorded path may have been re-prepared since
        split = leave_one_out(ds.sequences, cfg.data.min_len)
        if popularity not in ("train", "all"):
            raise InputError(f"--popularity must be train or all, got {popularity!r}", field="--popularity")
        lt = LongTailConfig.preset(preset, popularity=popularity)  # type: ignore[arg-type]

        def _ints(text: str, field: str) -> list[int]:
            try:
                return [int(x) for x in text.split(",") if x.strip()]
            except ValueError:
                raise InputError(f"expected comma-separated integers, got {text!r}", field=field) from None

        if user_thresholds:
            lt = lt.model_copy(update={"user_thresholds": _ints(user_thresholds, "--user-thresholds")})
        if item_thresholds:
            lt = lt.model_copy(update={"item_thresholds": _ints(item_thresholds, "--item-thresholds")})
        lt = LongTailConfig.model_validate(lt.model_dump())
        table_df = longtail_for_split(pl.read_parquet(run / "ranks.parquet"), split, lt, tuple(k or [10]))
        if as_json:
            typer.echo(json.dumps(table_df.to_dicts(), indent=2))
            return
        table = Table(title=f"Long-tail breakdown of {run} ({preset}, popularity={popularity})")
        for col in table_df.columns:
            table.add_column(col, justify="left" if table_df[col].dtype == pl.Utf8 else "right")
        for row in table_df.iter_rows():
            table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
        Console(emoji=False, width=120).print(table)
