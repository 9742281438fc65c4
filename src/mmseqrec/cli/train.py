"""``mmseqrec train``, ``mmseqrec evaluate`` and ``mmseqrec recommend``: thin wiring over ``mmseqrec.train``
and ``mmseqrec.serve.recommend``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from ..config import apply_overrides, validate_config
from ..errors import InputError

__all__ = ["build_experiment", "register"]

console = Console(emoji=False)


def build_experiment(config: Path | None = None, data: Path | None = None, model: str | None = None,
                     protocol: str | None = None, seed: int | None = None, sets: list[str] | None = None,
                     base: dict[str, Any] | None = None):
    """Experiment config from (``base``), a YAML file, the command-line flags and ``--set`` overrides, in
    that order. A ``--model`` other than the file's resets the model section to that model's defaults."""
    from ..train.config import ExperimentConfig

    raw: dict[str, Any] = json.loads(json.dumps(base or {}))
    source = "options (--set and flags)"
    if config is not None:
        source = str(config)
        if not config.exists():
            raise InputError("config file not found", file=config)
        try:
            loaded = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise InputError(f"invalid YAML: {exc}", file=config,
                             line=None if mark is None else mark.line + 1) from None
        if not isinstance(loaded, dict):
            raise InputError("top level must be a mapping", file=config)
        raw.update(loaded)
    if data is not None:
        raw.setdefault("data", {})["path"] = str(data)
    if model is not None:
        section = raw.get("model") or {}
        raw["model"] = {**section, "name": model} if section.get("name", model) == model else {"name": model}
    if protocol is not None:
        raw.setdefault("eval", {})["protocol"] = protocol
    if seed is not None:
        raw["seed"] = seed
    apply_overrides(raw, sets)
    cfg = validate_config(ExperimentConfig, raw, source=source)
    from ..evaluate import Protocol

    Protocol.parse(cfg.eval.protocol)  # fail early on a bad protocol string
    return cfg


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    return table


def register(app: typer.Typer) -> None:
    """Add the ``train``, ``evaluate`` and ``recommend`` commands to ``app``."""

    @app.command("train")
    def train_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
        data: Annotated[Path | None, typer.Option("--data", "-d", help="Prepared dataset directory.")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="sasrec | bert4rec | gru4rec | pop | itemknn | "
                                                  "bpr | lightgcn | vbpr | freedom | mllmrec")] = None,
        protocol: Annotated[str | None, typer.Option(help="full | sampled:N | candidates:N ...")] = None,
        config: Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML.")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override key.sub=value.")] = None,
        seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
        split: Annotated[str | None, typer.Option(help="General models: random:8:1:1 | time:8:1:1 | x_label.")
                         ] = None,
        epochs: Annotated[int | None, typer.Option(help="Maximum epochs (train.epochs; early stopping on "
                                                   "validation may end sooner).")] = None,
        device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N (train.device).")] = None,
        resume: Annotated[bool, typer.Option(help="Continue RUN from its last checkpoint.")] = False,
        overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = False,
    ) -> None:
        """Train a sequence model; writes RUN/metrics.json, config.yaml, model.safetensors, log.jsonl.

        Example: mmseqrec train --data DATA --model sasrec --out RUN --epochs 20 --device cpu
        """
        from ..train.general import GeneralTrainer, is_general
        from ..train.trainer import Trainer

        base = None
        if resume and config is None and (out / "config.yaml").exists():
            base = yaml.safe_load((out / "config.yaml").read_text())
        flags = ([f"train.epochs={epochs}"] if epochs is not None else []) + \
            ([f"train.device={device}"] if device is not None else []) + \
            ([f"data.split={split}"] if split else [])
        cfg = build_experiment(config, data, model, protocol, seed, [*flags, *(set_ or [])], base=base)
        trainer = GeneralTrainer if is_general(cfg) else Trainer
        metrics = trainer(cfg, out, resume=resume, overwrite=overwrite).fit()
        if os.environ.get("RANK", "0") != "0":  # torchrun: only rank 0 reports
            return
        console.print(_metrics_table(f"test ({metrics['protocol']}, best epoch {metrics['best_epoch']})",
                                     metrics["test"]))
        console.print(f"wrote {out / 'metrics.json'}")

    @app.command("evaluate")
    def evaluate_cmd(
        run: Annotated[Path, typer.Argument(help="Run directory written by `mmseqrec train`.")],
        protocol: Annotated[str | None, typer.Option(help="Protocol (default: the run's).")] = None,
        split: Annotated[str, typer.Option(help="test | valid | both")] = "test",
        exclude_history: Annotated[bool | None, typer.Option(
            "--exclude-history/--include-history", help="Default: the run's setting.")] = None,
        data: Annotated[Path | None, typer.Option(help="Dataset directory (default: the run's).")] = None,
        device: Annotated[str | None, typer.Option(help="cpu | cuda (default: the run's).")] = None,
        force: Annotated[bool, typer.Option(help="Score --data even if it is not the run's dataset.")] = False,
    ) -> None:
        """Re-score a trained run (best checkpoint); writes RUN/eval-<protocol>[-exclhist].json and
        ranks-<protocol>[-exclhist][-valid].parquet (the files `compare --protocol` and `experiment` read)."""
        from ..evaluate import Protocol
        from ..evaluate.runfiles import eval_stem
        from ..experiment.runner import rescore_run

        if split not in ("test", "valid", "both"):
            raise InputError(f"unknown split {split!r}; choose test, valid or both", field="--split")
        proto = str(Protocol.parse(protocol)) if protocol is not None else None
        splits = ("valid", "test") if split == "both" else (split,)
        rec = rescore_run(run, proto, exclude_history=exclude_history, splits=splits, device=device, data_dir=data,
                          reuse=False, force=force)
        for sp in splits:
            console.print(_metrics_table(f"{sp} ({rec['protocol']}"
                                         + (", history excluded" if rec["exclude_history"] else "") + ")", rec[sp]))
        console.print(f"wrote {run / ('eval-' + eval_stem(rec['protocol'], rec['exclude_history']) + '.json')}")

    @app.command("recommend")
    def recommend_cmd(
        run: Annotated[Path, typer.Argument(help="Run directory written by `mmseqrec train` or `mmseqrec llmrec "
                                            "train`.")],
        history: Annotated[str | None, typer.Option(help="Original item ids, oldest first, comma-separated.")]
        = None,
        user: Annotated[str | None, typer.Option(help="General models: an original user id (scored by its row); LLM "
                                                 "recommenders: whose stored preference summary the prompt uses.")]
        = None,
        k: Annotated[int, typer.Option("-k", "--k", help="Number of items (at least 1).")] = 10,
        include_seen: Annotated[bool, typer.Option(help="Allow items of the history.")] = False,
        cold: Annotated[str, typer.Option(help="No known history id: 'error' (default) or 'popularity' (the most "
                                          "popular training items, labelled as such).")] = "error",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
        data: Annotated[Path | None, typer.Option(help="Dataset directory (default: the run's).")] = None,
        force: Annotated[bool, typer.Option(help="Use --data even if it is not the run's dataset.")] = False,
        candidates_from: Annotated[str, typer.Option(help="LLM recommenders: the candidate stage they re-rank, "
                                                     "'popularity' or a run DIR (its top-N for the same history).")]
        = "popularity",
        n_candidates: Annotated[int, typer.Option(help="LLM recommenders: candidates re-ranked.")] = 20,
    ) -> None:
        """Print the top-K items with scores for a history of original item ids."""
        from ..serve.llmrec import is_llmrec_run
        from ..serve.recommend import load_recommender

        if k < 1:
            raise InputError(f"k must be at least 1, got {k}", field="-k")
        items = [h.strip() for h in (history or "").split(",") if h.strip()]
        llm = {}
        if is_llmrec_run(run):
            stage = candidates_from if candidates_from == "popularity" else load_recommender(
                candidates_from, data_dir=data, force=force)
            llm = {"candidates_from": stage, "n_candidates": n_candidates}
        rec = load_recommender(run, data_dir=data, force=force, **llm)
        if user is not None and not getattr(rec, "takes_user", False):
            raise InputError("--user needs a general model run (bpr, lightgcn, vbpr, freedom, mllmrec) or an LLM "
                             "recommender run", field="--user")
        res = rec(items, k=k, exclude_seen=not include_seen, cold=cold, **({"user": user} if user else {}))
        if as_json:
            typer.echo(json.dumps({"source": res.source, "candidates": res.candidates, "preference": res.preference,
                                   "items": [{"item_id": i, "title": t, "score": s} for i, t, s in res.items],
                                   "unknown": res.unknown}))
            return
        if res.candidates:
            c = res.candidates
            img = c.get("images")
            console.print(f"re-ranked candidates: {c['stage']} top-{c['n']} ({c['n_scored']} scored"
                          + (f"; {img['with_image']} with the item's image, {img['text_only']} text only" if img
                             else "") + ")", highlight=False)
        if res.preference:
            console.print(f"preference ({res.preference['source']}): {res.preference['text']}", highlight=False)
        if res.unknown:
            console.print(f"[yellow]unknown item ids (ignored):[/] {', '.join(res.unknown)}", highlight=False)
        pop = res.source == "popularity"
        title = (f"top {len(res.items)} by POPULARITY (no known history; score = training interactions)" if pop
                 else f"top {len(res.items)}")
        table = Table(title=title)
        for col, just in (("#", "right"), ("item", "left"), ("title", "left"),
                          ("interactions" if pop else "score", "right")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for rank, (item, title_, score) in enumerate(res.items, 1):
            table.add_row(str(rank), item, title_, f"{score:.0f}" if pop else f"{score:.4f}")
        console.print(table)
