"""``mmseqrec prepare`` and ``mmseqrec info``: thin wiring over :mod:`mmseqrec.data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError

__all__ = ["info_cmd", "prepare_cmd", "register"]


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"option {item!r} is not of the form key=value", field="--option")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def prepare_cmd(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Input files or directories (none for generated formats).")
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="Input format: amazon2023, amazon2018, amazon2014, "
            "movielens, recbole, sasrec-txt, seq-txt, table, synthetic.",
        ),
    ] = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to create.")] = ...,
    min_user_inter: Annotated[int, typer.Option(help="Drop users with fewer interactions (k-core).")] = 0,
    min_item_inter: Annotated[int, typer.Option(help="Drop items with fewer interactions (k-core).")] = 0,
    iterative_kcore: Annotated[
        bool,
        typer.Option(
            "--iterative-kcore/--single-pass",
            help="Iterate the k-core until stable, or LLM-ESR's single pass.",
        ),
    ] = True,
    single_pass_min_len: Annotated[
        int | None,
        typer.Option(help="Single pass: minimum remaining sequence length (default: --min-user-inter)."),
    ] = None,
    dedup: Annotated[str, typer.Option(help="Repeated (user, item) pairs: all, first or last.")] = "all",
    min_rating: Annotated[float | None, typer.Option(help="Keep interactions with rating >= this.")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace an existing --out directory. Derived data (enrich/, embed/) is kept when the "
            "interactions and items are unchanged, else moved to OUT.derived-<time>/; never deleted."
        ),
    ] = False,
    download: Annotated[
        str | None,
        typer.Option(
            help="movielens only: download this dataset (e.g. ml-latest-small) "
            "from files.grouplens.org into --cache-dir."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where --download keeps archives (default ~/.cache/mmseqrec).")
    ] = None,
    user_col: Annotated[str, typer.Option(help="table/recbole: user id column.")] = "user_id",
    item_col: Annotated[str, typer.Option(help="table/recbole: item id column.")] = "item_id",
    time_col: Annotated[
        str, typer.Option(help="table/recbole: timestamp column ('' = file order).")
    ] = "timestamp",
    rating_col: Annotated[str | None, typer.Option(help="table/recbole: rating column.")] = None,
    title_col: Annotated[str | None, typer.Option(help="table/recbole: item title column.")] = None,
    items_table: Annotated[
        Path | None, typer.Option(help="table: item side table (CSV/Parquet/JSONL).")
    ] = None,
    items_item_col: Annotated[
        str | None, typer.Option(help="table: item id column of --items-table.")
    ] = None,
    sep: Annotated[str, typer.Option(help="table: CSV field separator.")] = ",",
    seed: Annotated[int, typer.Option(help="Seed for generated formats (synthetic).")] = 0,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Format-specific key=value (repeatable).")
    ] = None,
) -> None:
    """Read raw data, apply the requested filters and write a dataset directory (atomically)."""
    from rich.console import Console

    from ..config import validate_config
    from ..data import prepare
    from ..data.download import download_movielens
    from ..data.preprocess import PrepareConfig
    from ..data.readers import ReaderOptions

    paths = list(paths or [])
    if download:
        if format != "movielens":
            raise InputError("--download works with --format movielens only", field="--download")
        paths.append(download_movielens(download, cache_dir))
    cfg = validate_config(
        PrepareConfig,
        {
            "min_user_inter": min_user_inter,
            "min_item_inter": min_item_inter,
            "kcore": "iterative" if iterative_kcore else "single-pass",
            "single_pass_min_len": single_pass_min_len,
            "dedup": dedup,
            "min_rating": min_rating,
        },
        source="command line",
    )
    ropts = validate_config(
        ReaderOptions,
        {
            "user_col": user_col,
            "item_col": item_col,
            "time_col": time_col or None,
            "rating_col": rating_col,
            "title_col": title_col,
            "items_table": items_table,
            "items_item_col": items_item_col,
            "sep": sep,
            "seed": seed,
            "extra": _parse_options(option),
        },
        source="command line",
    )
    notes: list[str] = []
    ds = prepare(format, paths, out, overwrite=overwrite, config=cfg, reader_options=ropts, notes=notes)
    m = ds.manifest
    for note in notes:
        Console(emoji=False, stderr=True).print(f"[bold]note:[/] {note}", highlight=False, soft_wrap=True)
    Console(emoji=False).print(
        f"wrote {ds.path}: {m['n_users']:,} users, {m['n_items']:,} items, "
        f"{m['n_interactions']:,} interactions",
        highlight=False,
    )


def _short(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, default=str)


def info_cmd(path: Annotated[Path, typer.Argument(help="A prepared dataset directory.")]) -> None:
    """Print the manifest of a dataset directory and its statistics (sequence lengths, sparsity) as a table."""
    from rich.console import Console
    from rich.table import Table

    from ..data import DatasetDir

    ds = DatasetDir(path)
    m = ds.manifest
    table = Table(title=str(path), show_header=True)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in (
        "format",
        "n_users",
        "n_items",
        "n_interactions",
        "n_raw_interactions",
        "has_rating",
        "titles_defaulted",
        "created",
    ):
        if key in m:
            v = m[key]
            table.add_row(key, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    st = ds.stats()
    table.add_row("sequence length", f"min {st['len_min']:,}, median {st['len_median']:g}, "
                  f"mean {st['len_mean']:.2f}, max {st['len_max']:,} (interactions per user)")
    table.add_row("interactions per item", f"median {st['item_inter_median']:g}")
    table.add_row("sparsity", f"{st['sparsity']:.4%} of user x item pairs empty")
    filters = m.get("filters") or []
    if not filters:
        table.add_row("filters", "none")
    for f in filters:
        params = ", ".join(
            f"{k}={_short(v)}" for k, v in f.items() if k not in ("name", "rows_before", "rows_after")
        )
        table.add_row(
            f"filter {f.get('name')}",
            f"{params}: {f.get('rows_before', 0):,} -> {f.get('rows_after', 0):,} rows",
        )
    for key, value in (m.get("labels") or {}).items():
        table.add_row(f"label {key}", str(value))
    if "split" in m:
        table.add_row("split", _short(m["split"]))
    for inp in m.get("inputs") or []:
        table.add_row("input", f"{inp['path']} ({inp.get('bytes', 0):,} B, sha256 {inp['sha256'][:12]})")
    for name, digest in (m.get("outputs") or {}).items():
        table.add_row("output", f"{name} (sha256 {digest[:12]})")
    Console(emoji=False, width=max(100, Console(emoji=False).width)).print(table)


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_cmd)
    app.command("info")(info_cmd)
