"""``mmseqrec embed``: thin wiring over :func:`mmseqrec.embed.pipeline.run_embed`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["embed_cmd", "register"]


def embed_cmd(
    data: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    source: Annotated[str, typer.Option("--source", "-s", help="title | text | attributes | image | TASK | "
                                        "TASK:VIEW (TASK reads DATA/enrich/TASK.parquet) | run:RUN_DIR (the item "
                                        "table of a trained run, e.g. LLMEmb's collaborative store).")] = "title",
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="all-MiniLM-L6-v2 (text default), "
                                         "efficientnet-lite0 (image default), sentence-transformers:NAME, "
                                         "hf:ID_OR_DIR, clip:ID_OR_DIR, llmemb:DIR|smollm2 (LLMEmb stage 1: LoRA "
                                         "contrastive fine-tuning, then encoding); 'auto' picks by source.")] = "auto",
    out: Annotated[str | None, typer.Option("--out", "-o", help="Store name under DATA/embed/ "
                                            "(default SOURCE-ENCODER).")] = None,
    tokens: Annotated[bool, typer.Option("--tokens", help="Also store token-level features (padded + lengths) "
                                         "for DMESR's fine-grained view.")] = False,
    max_tokens: Annotated[int, typer.Option(help="Tokens kept per item with --tokens.")] = 32,
    max_length: Annotated[int | None, typer.Option(help="Tokenizer truncation (default: the model's).")] = None,
    pooling: Annotated[str | None, typer.Option(help="hf: encoders: mean, last or cls (default mean).")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise the vectors "
                                                   "(default: yes, except run: sources and llmemb: encoders).")] = None,
    pca: Annotated[int | None, typer.Option(help="Reduce to this many PCA components (llmemb: default 1536).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Items per forward pass (default: 64 text / 16 images "
                                                   "on CPU, 256 on CUDA).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16.")] = "auto",
    image_fit: Annotated[str, typer.Option(help="Images: pad (letterbox, keeps the whole product) or crop.")] = "pad",
    workers: Annotated[int, typer.Option(help="Threads decoding images.")] = 4,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    scft: Annotated[Path | None, typer.Option("--scft", help="llmemb: YAML of the stage-1 options (steps, "
                                              "batch_size, lr, lora_rank, dropout_ratio, max_items, ...).")] = None,
    scft_set: Annotated[list[str] | None, typer.Option("--scft-set", help="llmemb: override one stage-1 option, "
                                                       "e.g. --scft-set steps=200 (repeatable).")] = None,
) -> None:
    """Encode item titles, texts, enrichment outputs or images into DATA/embed/NAME.safetensors (+ .json)."""
    from rich.console import Console

    from ..config import load_config, validate_config
    from ..embed.llmemb import ScftConfig
    from ..embed.pipeline import SCFT_PREFIX, EmbedConfig, run_embed
    from ..errors import InputError

    if (scft is not None or scft_set) and not encoder.lower().startswith(SCFT_PREFIX):
        raise InputError("--scft / --scft-set apply to llmemb: encoders only", field="--scft")
    if scft is not None and not scft.exists():
        raise InputError("SCFT options file not found", file=scft)
    scft_cfg = load_config(ScftConfig, scft, scft_set)
    cfg = validate_config(EmbedConfig, {
        "source": source, "encoder": encoder, "out": out, "tokens": tokens, "max_tokens": max_tokens,
        "max_length": max_length, "pooling": pooling, "normalize": normalize, "pca": pca,
        "batch_size": batch_size, "device": device, "dtype": dtype, "image_fit": image_fit, "workers": workers,
        "progress": progress, "scft": scft_cfg,
    }, source="command line")
    res = run_embed(data, cfg)
    m = res.meta
    console = Console(emoji=False)
    tok = f", tokens [{m['rows']}, {m['tokens']['max_tokens']}, {m['tokens']['dim']}]" if m.get("tokens") else ""
    console.print(
        f"wrote {res.path} ({m['rows']} x {m['dim']} float16{tok}); encoder {m['encoder']}, "
        f"{m['n_encoded']} items encoded, {m['n_missing']} missing"
        + (f" ({', '.join(f'{k}: {v}' for k, v in m['missing_reasons'].items())})" if m["n_missing"] else "")
        + (f", {m['items_per_s']:,.1f} items/s" if m.get("items_per_s") else ""),
        highlight=False, soft_wrap=True,
    )
    if m.get("scft"):
        sc = m["scft"]
        console.print(f"llmemb stage 1: {sc['steps']} steps on {sc['n_train_items']} items (resumed from step "
                      f"{sc['resumed_from']}, {sc['seconds_this_run']} s), loss {sc['loss_first']} -> "
                      f"{sc['loss_last']}, tau {sc['tau']}; LoRA checkpoint {sc['checkpoint']}",
                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("embed", help="Encode item texts or images into an embedding store aligned to the item ids.")(
        embed_cmd)
