"""``mmseqrec enrich``: thin wiring over :func:`mmseqrec.enrich.runner.run_enrich`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["enrich_cmd", "print_summary", "register"]


def enrich_cmd(
    data: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    task: Annotated[str, typer.Option("--task", "-t", help="item-description | item-summary | item-views | "
                                      "item-keywords | user-preference | user-profile | mllmrec-item-description "
                                      "| mllmrec-user-preference.")],
    backend: Annotated[str, typer.Option("--backend", "-b", help="offline (EfficientNet-Lite0 tags + SmolLM2, a "
                                         "lightweight stand-in for an MLLM) | echo (no model; tests) | "
                                         "transformers | openai | vllm.")] = "offline",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Hub id or local directory (transformers, "
                                              "vllm) or served model name (openai).")] = None,
    revision: Annotated[str | None, typer.Option(help="Model revision (part of the cache key).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="Only the first N items (or users).")] = None,
    only: Annotated[Path | None, typer.Option("--only", help="A text file of internal item (or user) ids, one per line "
                                              "(the dataset's `item` / `user` column, as `llmrec keyword-items` writes them): only these are generated.")]
    = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--keep-failed", help="Generate again what failed in "
                                               "an earlier run (default), or serve those failures from the cache.")]
    = True,
    max_consecutive_failures: Annotated[int, typer.Option(help="Stop (exporting nothing) after this many failed "
                                                          "generations in a row; 0 = never.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Requests per generate call (one cache commit each).")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Generated tokens per request.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy (default).")] = 0.0,
    mode: Annotated[str, typer.Option(help="user-preference: recurrent (blocks, MLLM-MSR) or direct.")]
    = "recurrent",
    block_size: Annotated[int, typer.Option(help="Items per block in recurrent mode.")] = 3,
    max_history: Annotated[int, typer.Option(help="Most recent training items per user (0 = all).")] = 20,
    image_kind: Annotated[str | None, typer.Option(help="Fills MLLM-MSR's 'this image, which is ...' (default: from "
                                                   "the dataset, e.g. 'a picture of a product'; MicroLens: "
                                                   "'a cover of a video').")] = None,
    category: Annotated[str, typer.Option(help="mllmrec-item-description: fills 'relevant to the ...' (the "
                                          "reference hard-codes this default).")] = "Clothing, Shoes & Jewelry",
    profile_source: Annotated[str, typer.Option(help="mllmrec-user-preference: training (default, no leak) or "
                                                "all-interactions (MLLMRec's released code: validation and test "
                                                "items enter the profile; written under its own name).")]
    = "training",
    api_base: Annotated[str, typer.Option(help="openai: server base URL.")] = "http://127.0.0.1:8000/v1",
    api_key_env: Annotated[str, typer.Option(help="openai: environment variable holding the API key.")]
    = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(help="openai: parallel requests.")] = 8,
    timeout: Annotated[float, typer.Option(help="openai: seconds per request.")] = 120.0,
    retries: Annotated[int, typer.Option(help="openai: retries of a request (timeouts, 429, 5xx).")] = 4,
    max_pixels: Annotated[int, typer.Option(help="Images are resized to at most this many pixels.")] = 448 * 448,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads (offline default: half the cores).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    tune: Annotated[str, typer.Option(help="item-keywords: none, or grpo (MMSRARec: tune the keyword summariser "
                                      "with TRL's GRPOTrainer on alpha R_info + beta R_recon + gamma R_len first, "
                                      "then generate with the tuned model; needs the llm extra).")] = "none",
    tune_steps: Annotated[int, typer.Option(help="--tune grpo: optimiser steps.")] = 20,
    tune_items: Annotated[int, typer.Option(help="--tune grpo: items (text-view prompts) tuned on.")] = 64,
    reward_weights: Annotated[str, typer.Option(help="--tune grpo: alpha,beta,gamma.")] = "1.0,0.01,0.05",
    engine: Annotated[str, typer.Option(help="local (one process, SQLite cache; default) | ray (a Ray Data "
                                        "pipeline by shard, local Ray or a cluster; needs the optional extra named cluster).")]
    = "local",
    ray_address: Annotated[str | None, typer.Option(help="ray: cluster address (default $RAY_ADDRESS, else a "
                                                    "local Ray).")] = None,
    ray_cpus: Annotated[int | None, typer.Option(help="ray: CPUs of the local Ray (default all).")] = None,
    shard_size: Annotated[int, typer.Option(help="ray: output rows per shard (the unit of resumption).")] = 1000,
    actors: Annotated[int, typer.Option(help="ray: generation actors (one backend each).")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(help="ray: GPUs per generation actor (vllm: 1).")] = 0.0,
) -> None:
    """Generate item descriptions / views / keywords or user preferences into DATA/enrich/TASK.parquet.

    Resumable: finished generations live in DATA/enrich/cache.sqlite (--engine ray: in finished shards under
    DATA/enrich/TASK.shards/) and are never recomputed. Exits 1 when
    no generation succeeded; stops early (exit 2) when the backend cannot be reached or fails many in a row.
    """

    from ..config import validate_config
    from ..enrich.runner import EnrichConfig, run_enrich

    cfg = validate_config(EnrichConfig, {
        "task": task, "limit": limit, "only": _read_ids(only), "retry_failed": retry_failed, "mode": mode, "block_size": block_size,
        "max_consecutive_failures": max_consecutive_failures,
        "max_history": max_history, "image_kind": image_kind, "category": category,
        "profile_source": profile_source, "engine": engine,
        "ray": {"address": ray_address, "num_cpus": ray_cpus, "shard_size": shard_size, "actors": actors,
                "gpus_per_actor": gpus_per_actor},
        "backend": {"backend": backend, "model": model, "revision": revision, "batch_size": batch_size,
                    "device": device, "threads": threads, "max_pixels": max_pixels, "api_base": api_base, "api_key_env": api_key_env,
                    "concurrency": concurrency, "timeout_s": timeout, "retries": retries,
                    "decoding": {"max_new_tokens": max_new_tokens, "temperature": temperature}},
    }, source="command line")
    if tune != "none":
        cfg = _tune(data, cfg, tune, tune_steps, tune_items, reward_weights, device)
    res = run_enrich(data, cfg, progress=progress)
    print_summary(res)
    if res.counts["ok"] == 0 and res.counts["failed"] > 0:
        from rich.console import Console

        reasons = "; ".join(res.info["failure_reasons"])
        Console(emoji=False, stderr=True).print(f"[bold red]error:[/] no generation succeeded ({res.counts['failed']} failed); "
                                   f"first reasons: {reasons}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _read_ids(path: Path | None) -> list[int] | None:
    """``--only FILE``: integer ids, one per line (blank lines ignored); a bad line is an error naming it."""
    from ..errors import InputError

    if path is None:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read the id list: {exc.strerror}", file=path) from None
    ids = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ids.append(int(line))
        except ValueError:
            raise InputError(f"not an integer id: {line.strip()[:40]!r}", file=path, line=n) from None
    if not ids:
        raise InputError("the id list is empty", file=path)
    return ids


def _tune(data: Path, cfg, tune: str, steps: int, items: int, weights: str, device: str):
    """``--tune grpo``: the enrich config generating with the GRPO-tuned keyword summariser."""
    from ..config import validate_config
    from ..embed.encoders import resolve_device
    from ..errors import InputError
    from ..llmrec.grpo import GRPOTuneConfig, tune_for_enrich

    if tune != "grpo":
        raise InputError(f"unknown --tune {tune!r}; choose none or grpo", field="--tune")
    try:
        alpha, beta, gamma = (float(x) for x in weights.split(","))
    except ValueError:
        raise InputError(f"expected three comma-separated numbers alpha,beta,gamma, got {weights!r}",
                         field="--reward-weights") from None
    gcfg = validate_config(GRPOTuneConfig, {"steps": steps, "items": items, "alpha": alpha, "beta": beta,
                                            "gamma": gamma}, source="command line")
    cfg, out, reused = tune_for_enrich(data, cfg, gcfg, device=resolve_device(device))
    typer.echo(f"{'reused' if reused else 'tuned'} keyword summariser (GRPO): {out}")
    return cfg


def print_summary(res) -> None:
    """The run summary: items (or users), views, what this run generated and why rows were skipped or failed."""
    from rich.console import Console
    from rich.table import Table

    console = Console(emoji=False)
    info = res.info
    units, run = info["units"], info["this_run"]
    unit = units["kind"]
    t = Table(title=f"enrich {res.task} ({info['backend']}: {info['model_id']})")
    for c in ("", "total", "ok", "failed", "skipped"):
        t.add_column(c, justify="left" if not c else "right")
    t.add_row(unit, str(units["total"]), str(units["ok"]), str(units["failed"]), str(units["skipped"]))
    for view, c in (info.get("views") or {}).items():
        t.add_row(f"view {view}", str(sum(c.values())), str(c["ok"]), str(c["failed"]), str(c["skipped"]))
    console.print(t)
    lines = [(f"this run: {run['generated']} generated ({run['failed']} failed), {run['from_cache']} from cache; "
              f"{run['seconds']:.1f} s, {run[f'{unit}_per_s']:.2f} {unit}/s "
              f"({run['generations_per_s']:.2f} generations/s)")]
    if units["beyond_limit"]:
        why = " or ".join(w for w, on in (("beyond --limit", info["options"].get("limit")),
                                          ("not in --only", info["options"].get("only") is not None)) if on)
        lines.append(f"{units['beyond_limit']} {unit} {why or 'beyond --limit'} (not processed)")
    other = {k: v for k, v in info["skipped_reasons"].items() if k not in ("beyond --limit", "not in --only")}
    if other:
        lines.append("skipped rows: " + ", ".join(f"{k} ({v})" for k, v in other.items()))
    if info["failure_reasons"]:
        lines.append("failed: " + "; ".join(f"{k} ({v})" for k, v in info["failure_reasons"].items()))
    if run["failed_from_cache"]:
        lines.append(f"{run['failed_from_cache']} failure(s) served from the cache (--keep-failed); run without "
                     "that flag to generate them again")
    if eng := info.get("engine"):
        for b in eng["rounds"]:
            block = f" block {b['round'] + 1}" if len(eng["rounds"]) > 1 else ""
            lines.append(f"ray{block}: {b['shards']} shard(s), {len(b['run'])} run ({len(b['partial'])} only in "
                         f"part), {len(b['reused'])} finished earlier, {len(b['from_cache'])} from the cache; "
                         f"shards in {eng['work_dir']}")
    if info.get("stand_in"):
        lines.append(f"note: {info['stand_in']}")
    lines.append(f"wrote {res.parquet}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("enrich")(enrich_cmd)
