"""``mmseqrec llmrec ...``: the (M)LLM as the recommender (thin wiring over :mod:`mmseqrec.llmrec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

llmrec_app = typer.Typer(help="The (M)LLM as the recommender (MLLM-MSR): candidate lists, LoRA SFT, yes/no "
                              "scoring.", no_args_is_help=True)


@llmrec_app.command("candidates")
def candidates_cmd(
    data: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Candidate file to write (Parquet).")],
    history: Annotated[int, typer.Option(help="History items per user (both papers: 5).")] = 5,
    negatives: Annotated[int, typer.Option(help="Random never-interacted negatives per list.")] = 20,
    split: Annotated[str, typer.Option(help="user (8:1:1 over users, MLLM-MSR).")] = "user",
    seed: Annotated[int, typer.Option(help="Seed of the user split, the negatives and the positive's column.")]
    = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Per user a history of n items, 1 positive + N never-interacted negatives, users split 8:1:1; score any run
    on it with `mmseqrec evaluate RUN --protocol candidates:file=FILE`."""
    from ..data.dataset import DatasetDir
    from ..errors import InputError
    from ..llmrec.candidates import build_candidate_set, write_candidate_set

    if split != "user":
        raise InputError(f"unknown split {split!r}; only 'user' (8:1:1 over users) is implemented", field="--split")
    if out.exists() and not overwrite:
        raise InputError("exists; pass --overwrite to replace it (candidate files are inputs of results)",
                         file=out)
    ds = DatasetDir(data)
    cs = build_candidate_set(ds.sequences, history=history, negatives=negatives, seed=seed)
    sha = write_candidate_set(out, cs, ds.n_items)
    c = cs.counts()
    typer.echo(f"wrote {out} (sha256 {sha[:12]}): {c['train']} train / {c['valid']} valid / {c['test']} test users, "
               f"{negatives + 1} candidates each, history {history}; {cs.n_skipped} users with fewer than "
               f"{history + 2} interactions left out")


def register(app: typer.Typer) -> None:
    """Add the ``llmrec`` command group to ``app``."""
    app.add_typer(llmrec_app, name="llmrec")
