"""``mmseqrec enrich``: thin wiring over :func:`mmseqrec.enrich.runner.run_enrich`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["enrich_cmd", "register"]


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
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Retry generations that failed before.")]
    = False,
    batch_size: Annotated[int, typer.Option(help="Requests per generate call (one cache commit each).")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Generated tokens per request.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy (default).")] = 0.0,
    mode: Annotated[str, typer.Option(help="user-preference: recurrent (blocks, MLLM-MSR) or direct.")]
    = "recurrent",
    block_size: Annotated[int, typer.Option(help="Items per block in recurrent mode.")] = 3,
    max_history: Annotated[int, typer.Option(help="Most recent training items per user (0 = all).")] = 20,
    image_kind: Annotated[str, typer.Option(help="Fills MLLM-MSR's 'this image, which is ...'.")]
    = "a cover of a video",
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
    max_pixels: Annotated[int, typer.Option(help="Images are resized to at most this many pixels.")] = 448 * 448,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads (offline default: half the cores).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Generate item descriptions / views / keywords or user preferences into DATA/enrich/TASK.parquet.

    Resumable: finished generations live in DATA/enrich/cache.sqlite and are never recomputed.
    """
    from rich.console import Console
    from rich.table import Table

    from ..config import validate_config
    from ..enrich.runner import EnrichConfig, run_enrich

    cfg = validate_config(EnrichConfig, {
        "task": task, "limit": limit, "retry_failed": retry_failed, "mode": mode, "block_size": block_size,
        "max_history": max_history, "image_kind": image_kind, "category": category,
        "profile_source": profile_source,
        "backend": {"backend": backend, "model": model, "revision": revision, "batch_size": batch_size,
                    "device": device, "threads": threads, "max_pixels": max_pixels, "api_base": api_base, "api_key_env": api_key_env,
                    "concurrency": concurrency, "timeout_s": timeout,
                    "decoding": {"max_new_tokens": max_new_tokens, "temperature": temperature}},
    }, source="command line")
    res = run_enrich(data, cfg, progress=progress)
    console = Console()
    t = Table(title=f"enrich {res.task} ({res.info['backend']}: {res.info['model_id']})")
    for c in ("ok", "failed", "skipped", "generated now", "from cache", "items/s"):
        t.add_column(c, justify="right")
    rate = res.generated / res.seconds if res.seconds > 0 and res.generated else 0.0
    t.add_row(str(res.counts["ok"]), str(res.counts["failed"]), str(res.counts["skipped"]), str(res.generated),
              str(res.cached), f"{rate:.2f}")
    console.print(t)
    if res.info.get("stand_in"):
        console.print(f"note: {res.info['stand_in']}", highlight=False)
    console.print(f"wrote {res.parquet}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("enrich")(enrich_cmd)
