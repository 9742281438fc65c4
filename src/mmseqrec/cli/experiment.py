"""``mmseqrec experiment``: run a grid of models x backbones x seeds x protocols and write the results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("experiment")
    def experiment(
        grid_file: Annotated[Path, typer.Argument(help="Experiment grid YAML (see configs/experiments/).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: runs/, results.md, results.csv, plots/.")]
        = Path("experiments/out"),
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a grid key, e.g. seeds=[1,2].")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs without training.")] = False,
        report_only: Annotated[bool, typer.Option("--report-only", help="Only rebuild the report from finished runs.")]
        = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Per-epoch progress bars.")] = True,
        split: Annotated[str | None, typer.Option(
            "--split", help="Report the 'test' split (default) or 'valid' (for ablations that choose defaults; "
                            "writes results-valid.md/csv, no test numbers).")] = None,
    ) -> None:
        """Run every (dataset, variant, backbone, seed) of GRID_FILE, then write a results table.

        Resumable: finished runs are skipped, interrupted runs resume, re-scored protocols are reused.
        The table gives mean ± std over seeds and paired Wilcoxon p-values against the baseline variant (unit:
        the user's test case, metric averaged over seeds per case; raw and Holm-adjusted over each table);
        model selection always uses validation data under the first protocol.
        """
        from rich.console import Console
        from rich.markdown import Markdown

        from ..experiment import load_grid, run_grid, write_report

        grid = load_grid(grid_file, [*(set_ or []), *([f"report_split={split}"] if split else [])])
        if not report_only:
            run_grid(grid, out, progress=progress, dry_run=dry_run)
        if dry_run:
            return
        paths = write_report(grid, out)
        console = Console(emoji=False)
        console.print(Markdown(Path(paths["markdown"]).read_text()))
        console.print(f"\nwrote {paths['markdown']}, {paths['csv']} and {len(paths['plots'])} plot(s)"
                      + (f" in {Path(paths['plots'][0]).parent}" if paths["plots"] else ""))
