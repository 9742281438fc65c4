"""Throughput of the ``transformers`` enrichment backend against plain HF ``generate`` at batch 8.

The baseline is what MLLM-MSR's ``image_summary.py`` does: the processor + ``model.generate`` on batches of 8
in request order. Ours is :class:`mmseqrec.enrich.backends.transformers_backend.TransformersBackend` (requests
grouped and length-sorted, left padding, large batches, bf16 on CUDA). Both generate exactly
``--new-tokens`` tokens per item (``min_new_tokens`` is set in the saved generation config), greedy.

The model is a Qwen2-VL-2B-shaped model with **random weights** built from a config (no download; speed
depends on the shape only): text 1536-d / 28 layers / 12 heads / 2 KV heads, vision 1280-d / 32 layers,
~151k vocabulary. ``--arch qwen2-vl`` needs torchvision (the Qwen2-VL processor requires it); without it the
script falls back to ``--arch llava`` with the same text tower and a CLIP vision tower at 336 px (577 image
tokens). Each item: ~600 image tokens + ~100 text tokens in, ``--new-tokens`` (80) out.

Examples::

    python benchmarks/enrich_speed.py --device cuda                  # the real measurement (GPU)
    python benchmarks/enrich_speed.py --device cpu --tiny            # smoke run (tiny shapes, seconds)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _images(n: int, side: tuple[int, int], seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (side[1], side[0], 3), dtype=np.uint8)) for _ in range(n)]


def _prompts(n: int, chars: int) -> list[str]:
    base = "Please describe this image, which is a cover of a video, in one continuous paragraph with colors. "
    # char-level tokenizer: one token per character; lengths vary a little as real prompts do
    return [(base * 4)[: chars - (i % 7) * 3] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
    ap.add_argument("--arch", choices=["auto", "qwen2-vl", "llava"], default="auto")
    ap.add_argument("--items", type=int, default=None, help="items per measurement (default 256 GPU, 16 tiny)")
    ap.add_argument("--batch-size", type=int, default=64, help="our backend's batch size")
    ap.add_argument("--baseline-batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=80)
    ap.add_argument("--text-tokens", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmseqrec.enrich.backends import BackendConfig, Decoding, GenRequest
    from mmseqrec.enrich.backends.transformers_backend import TransformersBackend
    from mmseqrec.enrich.random_vlm import build_random_vlm

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    arch = args.arch
    if arch == "auto":
        arch = "qwen2-vl" if importlib.util.find_spec("torchvision") else "llava"
    size = "tiny" if args.tiny else "2b"
    n = args.items or (16 if args.tiny else 256)
    new_tokens = min(args.new_tokens, 8) if args.tiny else args.new_tokens
    # image size giving ~600 image tokens: Qwen2-VL 28x28 px per merged token (24x25 = 600), LLaVA 336 px = 577
    side = (28 * 24, 28 * 25) if arch == "qwen2-vl" and not args.tiny else (336, 336)
    if args.tiny:
        side = (56, 56)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        d = build_random_vlm(Path(tmp) / "m", arch=arch, size=size)
        cfgj = json.loads((d / "generation_config.json").read_text())
        cfgj.update(min_new_tokens=new_tokens, max_new_tokens=new_tokens)
        (d / "generation_config.json").write_text(json.dumps(cfgj))
        build_s = time.perf_counter() - t0
        images = _images(n, side)
        prompts = _prompts(n, args.text_tokens)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32

        # ---- baseline: plain processor + generate at batch 8, request order (MLLM-MSR's loop)
        proc = AutoProcessor.from_pretrained(d)
        proc.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(d, dtype=dtype).eval().to(device)

        def baseline(k: int) -> float:
            t = time.perf_counter()
            for s in range(0, k, args.baseline_batch):
                texts = [proc.apply_chat_template([{"role": "user", "content": [
                    {"type": "image"}, {"type": "text", "text": p}]}], tokenize=False, add_generation_prompt=True)
                    for p in prompts[s : s + args.baseline_batch]]
                enc = proc(text=texts, images=images[s : s + args.baseline_batch], padding=True,
                           return_tensors="pt").to(device)
                if "pixel_values" in enc:
                    enc["pixel_values"] = enc["pixel_values"].to(dtype)
                with torch.inference_mode():
                    out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False)
                proc.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - t

        in_tokens = None
        enc = proc(text=[proc.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": prompts[0]}]}], tokenize=False, add_generation_prompt=True)],
            images=images[:1], return_tensors="pt")
        in_tokens = int(enc["input_ids"].shape[1])
        baseline(min(n, args.baseline_batch))  # warm-up
        base_s = baseline(n)
        model = None  # free the baseline copy
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        # ---- ours
        be = TransformersBackend(BackendConfig(backend="transformers", model=str(d), device=device,
                                               batch_size=args.batch_size, max_pixels=side[0] * side[1],
                                               decoding=Decoding(max_new_tokens=new_tokens)))
        reqs = [GenRequest(p, im, new_tokens) for p, im in zip(prompts, images, strict=True)]
        be.generate(reqs[: min(n, args.batch_size)])  # load + warm-up
        t = time.perf_counter()
        outs = be.generate(reqs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ours_s = time.perf_counter() - t
        assert all(o.ok for o in outs), [o.error for o in outs if not o.ok][:3]

    res = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "arch": arch, "shape": size, "items": n, "input_tokens_per_item": in_tokens, "new_tokens": new_tokens,
        "dtype": str(dtype).replace("torch.", ""), "build_s": round(build_s, 2),
        "baseline_batch": args.baseline_batch, "baseline_items_per_s": round(n / base_s, 3),
        "ours_batch": args.batch_size, "ours_items_per_s": round(n / ours_s, 3),
        "speedup": round(base_s / ours_s, 2),
        "goal": ">= 10x baseline and >= 40 items/s (GPU, 2b shape)",
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
