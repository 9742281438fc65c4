"""``mmseqrec llmrec ...``: the (M)LLM as the recommender (thin wiring over :mod:`mmseqrec.llmrec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

llmrec_app = typer.Typer(help="The (M)LLM as the recommender (MLLM-MSR, MMSRARec): candidate lists, LoRA SFT, "
                              "yes/no scoring.", no_args_is_help=True)


@llmrec_app.command("candidates")
def candidates_cmd(
    data: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Candidate file to write (Parquet).")],
    history: Annotated[int, typer.Option(help="History items per user (both papers: 5).")] = 5,
    negatives: Annotated[int, typer.Option(help="Random never-interacted negatives per list.")] = 20,
    split: Annotated[str, typer.Option(help="user (8:1:1 over users, MLLM-MSR) | impression (8:1:1 over the "
                                       "impression lists of DATA/impressions.parquet, MMSRARec).")] = "user",
    seed: Annotated[int, typer.Option(help="Seed of the user split, the negatives and the positive's column.")]
    = 0,
    max_users: Annotated[int | None, typer.Option(help="A seeded random subset of the eligible users (LLM inputs "
                                                  "cost a generation per user).")] = None,
    with_preferences: Annotated[bool, typer.Option(help="Only users with a preference summary in "
                                                   "DATA/enrich/user-preference.parquet (summaries generated "
                                                   "for a subset, e.g. `enrich --limit N`).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Per user a history of n items, 1 positive + N never-interacted negatives, users split 8:1:1; score any run
    on it with `mmseqrec evaluate RUN --protocol candidates:file=FILE`."""
    import numpy as np

    from ..data.dataset import DatasetDir
    from ..errors import InputError
    from ..llmrec.candidates import build_candidate_set, build_impression_candidate_set, write_candidate_set

    if split not in ("user", "impression"):
        raise InputError(f"unknown split {split!r}; choose user (8:1:1 over users) or impression (8:1:1 over the "
                         "dataset's impression lists)", field="--split")
    if out.exists() and not overwrite:
        raise InputError("exists; pass --overwrite to replace it (candidate files are inputs of results)",
                         file=out)
    ds = DatasetDir(data)
    if split == "impression":
        if max_users is not None:
            raise InputError("--max-users applies to --split user only", field="--max-users")
        cs = build_impression_candidate_set(ds.path, ds.sequences, history=history, negatives=negatives, seed=seed)
        unit, why = "impressions", f"fewer than {history} earlier interactions or {negatives} shown negatives"
    else:
        only = None
        if with_preferences:
            from ..llmrec.prompts import load_preferences

            pref = load_preferences(ds)
            only = np.asarray([u for u in range(1, ds.n_users + 1) if pref[u]], dtype=np.int64)
        cs = build_candidate_set(ds.sequences, history=history, negatives=negatives, seed=seed,
                                 max_users=max_users, only_users=only)
        unit, why = "users", f"fewer than {history + 2} interactions" + (
            f", or beyond --max-users {max_users}" if max_users else "") + (
            ", or without a preference summary" if with_preferences else "")
    sha = write_candidate_set(out, cs, ds.n_items)
    c = cs.counts()
    typer.echo(f"wrote {out} (sha256 {sha[:12]}): {c['train']} train / {c['valid']} valid / {c['test']} test "
               f"{unit}, {negatives + 1} candidates each, history {history}; {cs.n_skipped} {unit} left out "
               f"({why})")


@llmrec_app.command("keyword-items")
def keyword_items_cmd(
    data: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    candidates: Annotated[Path, typer.Option(help="Candidate file from `mmseqrec llmrec candidates`.")],
    retriever: Annotated[Path, typer.Option(help="The trained SASRec run `llmrec train --method mmsrarec` will use.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Text file of item ids, one per line.")],
    similar_users: Annotated[int, typer.Option(help="Similar training users per row (|S_u|).")] = 3,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    """The items whose keywords MMSRARec needs on this candidate file (histories, candidates, similar users' next
    items): generate exactly these with `mmseqrec enrich DATA --task item-keywords --only FILE`."""
    from ..data.dataset import DatasetDir
    from ..fileio import atomic_write_text
    from ..llmrec.candidates import read_candidate_set
    from ..llmrec.mmsrarec import keyword_items
    from ..llmrec.retrieval import similar_users as find_similar
    from ..train.run import load_run

    ds = DatasetDir(data)
    cs = read_candidate_set(candidates, ds.n_items)
    ret = load_run(retriever, device=device, data_dir=ds.path)
    ids = keyword_items(cs, find_similar(ret.model, ds.sequences, cs, k=similar_users, device=device))
    atomic_write_text(out, "".join(f"{i}\n" for i in ids.tolist()))
    typer.echo(f"wrote {out}: {ids.size} items for {cs.users.size} lists (histories, candidates, "
               f"{similar_users} similar users' next items)")


@llmrec_app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", "-d", help="Prepared dataset directory (with "
                                       "enrich/user-preference.parquet).")],
    candidates: Annotated[Path, typer.Option(help="Candidate file from `mmseqrec llmrec candidates`; pass the same "
                                             "path string to `mmseqrec evaluate --protocol candidates:file=...`.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Local transformers chat model directory, or "
                                       "'smollm2' (offline SmolLM2-135M-Instruct).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    method: Annotated[str, typer.Option(help="mllm-msr (preference summaries) | mmsrarec (item keywords + "
                                        "similar users from --retriever, multi-task SFT; keywords GRPO-tuned by `enrich --tune grpo`).")]
    = "mllm-msr",
    retriever: Annotated[Path | None, typer.Option(help="mmsrarec: a trained SASRec run on the same dataset.")]
    = None,
    similar_users: Annotated[int, typer.Option(help="mmsrarec: similar training users per user (|S_u|).")] = 3,
    multitask: Annotated[bool, typer.Option(help="mmsrarec: add the two auxiliary instruction types.")] = True,
    keywords: Annotated[str, typer.Option(help="mmsrarec: file (enrich/item-keywords.parquet) | item-text (the "
                                          "item's own text in place of generated keywords).")] = "file",
    seed: Annotated[int, typer.Option(help="Seed of LoRA init, negatives and subsampling.")] = 0,
    epochs: Annotated[int, typer.Option(help="SFT epochs over the training users' 1:1 pairs.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the LoRA weights.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="SFT examples per step.")] = 4,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    max_train_users: Annotated[int | None, typer.Option(help="Subsample of training users (seeded).")] = None,
    max_length: Annotated[int, typer.Option(help="Tokens per SFT example (prompt cut from the left).")] = 1024,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
    eval_every: Annotated[int, typer.Option(help="Score the valid lists every N SFT steps for model selection "
                                            "(0: after every epoch; epoch ends are always scored).")] = 0,
    select_metric: Annotated[str, typer.Option(help="Valid metric that selects the adapter kept (AUC, HR@5, "
                                               "NDCG@5, MRR@5, ...).")] = "AUC",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = False,
) -> None:
    """LoRA SFT of a chat LM (or an image-text-to-text model: the candidates' images enter the prompt) on the
    yes/no prompt, keeping the adapter with the best valid score, then yes/no scoring of the file's valid and
    test lists; writes the run-directory contract (config.yaml, adapter/ safetensors, metrics.json, ranks.parquet)."""
    from ..errors import InputError
    from ..llmrec.run import LLMRecConfig, train_llmrec

    if keywords not in ("file", "item-text"):
        raise InputError(f"unknown keywords source {keywords!r}; choose file or item-text", field="--keywords")
    if method not in ("mllm-msr", "mmsrarec"):
        raise InputError(f"unknown method {method!r}; choose mllm-msr or mmsrarec", field="--method")
    cfg = LLMRecConfig(method=method, retriever=None if retriever is None else str(retriever),
                       similar_users=similar_users, multitask=multitask, keywords=keywords, data=str(data), candidates=str(candidates), model=model, seed=seed,
                       epochs=epochs, lr=lr, batch_size=batch_size, lora_r=lora_r, lora_alpha=2 * lora_r,
                       max_train_users=max_train_users, max_length=max_length, device=device,
                       eval_every=eval_every, select_metric=select_metric)
    rec = train_llmrec(cfg, out, overwrite=overwrite)
    _print(rec, out)


@llmrec_app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory written by `mmseqrec llmrec train`.")],
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: the run's).")] = None,
) -> None:
    """Re-score a trained LLM-recommender run on its candidate file (rewrites metrics.json and the ranks)."""
    from ..llmrec.run import evaluate_llmrec

    _print(evaluate_llmrec(run, device), run)


def _print(rec: dict, run: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{rec['protocol']}")
    table.add_column("metric")
    for s in ("valid", "test"):
        table.add_column(s, justify="right")
    for k in rec["test"]:
        table.add_row(k, *(f"{rec[s][k]:.4f}" if k != "n_cases" else str(rec[s][k]) for s in ("valid", "test")))
    Console(emoji=False).print(table)
    inf = rec.get("inference") or {}
    typer.echo(f"{inf.get('forwards_per_user', 0):.1f} forwards and {inf.get('seconds_per_user', 0):.3f} s per user "
               f"({inf.get('device')}); wrote {run / 'metrics.json'}")


def register(app: typer.Typer) -> None:
    """Add the ``llmrec`` command group to ``app``."""
    app.add_typer(llmrec_app, name="llmrec")
