"""Large-catalogue speed: one training step per objective and full-ranking evaluation in item chunks.

Training: a SASRec step (id embedding of ``--items`` items, width ``--hidden``, ``--layers`` layers, AdamW) on
random sequences ``[--batch, --max-len + 1]`` with every position a target, for each objective of
``--objectives`` (``ce-chunked`` never builds the ``[B * L, n_items]`` logits; plain ``ce`` is skipped when
its logits and their gradient would exceed ``--max-logits-gb``). Each objective runs in its own process so
that its peak memory (``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) is its own.

Evaluation: ``--eval-users`` random user states ranked against ``--items`` random item vectors with
:func:`mmseqrec.evaluate.chunked.chunked_rank_parts` (exact pessimistic-tie ranks + running top-10), users in
batches of ``--eval-batch``, items in chunks of ``--item-chunk``.

Goals for one GPU (issue #15): full-softmax step <= 100 ms at B 256, L 200, d 64, 1M items; 1M users x 1M items
evaluation <= 10 s. The machine is often shared: print ``uptime`` next to the figures.

Examples::

    python benchmarks/scale_speed.py                                   # CPU: B 128, L 50, d 64, 1M items
    python benchmarks/scale_speed.py --items 100000 --objectives ce ce-chunked
    python benchmarks/scale_speed.py --device cuda --batch 256 --max-len 200 --eval-users 1000000 \\
        --eval-batch 8192 --item-chunk 262144
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

OBJECTIVES = ("ce-chunked", "sampled-softmax-logq", "ce")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def time_step(args, objective: str) -> dict:
    """Median ms/step of ``objective`` after one warm-up step, and the process's peak memory."""
    from mmseqrec.models.sequence import Batch
    from mmseqrec.train.config import load_experiment
    from mmseqrec.train.run import build_model

    dev = torch.device(args.device)
    cfg = load_experiment(None, [f"model.n_layers={args.layers}", f"train.max_len={args.max_len}",
                                 "model.dropout=0.0", f"objective.name={objective}",
                                 f"objective.chunk_size={args.ce_chunk}",
                                 f"objective.n_negatives={args.negatives}", f"item_encoder.dim={args.hidden}"])
    torch.manual_seed(0)
    model = build_model(cfg, args.items).to(dev)
    if objective == "sampled-softmax-logq":  # Zipf-like training counts
        model.set_sampling_counts((1e6 / torch.arange(1, args.items + 2, dtype=torch.float64)).floor())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seq = torch.randint(1, args.items + 1, (args.batch, args.max_len + 1), device=dev)
    batch = Batch(seq=seq, users=torch.arange(args.batch, device=dev))
    bf16 = args.bf16 and dev.type == "cuda"
    times = []
    for step in range(args.steps + 1):
        _sync(dev)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            total, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        _sync(dev)
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"objective": objective, "ms_per_step": 1000 * times[len(times) // 2], "steps": len(times),
            "peak_mb": round(_peak_mb(dev)), "loss": float(total)}


def time_eval(args) -> dict:
    """Seconds to rank ``--eval-users`` targets among ``--items`` items in chunks (+ top-10)."""
    from mmseqrec.evaluate.chunked import chunked_rank_parts

    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    items = torch.randn(args.items + 1, args.hidden, device=dev, generator=g)
    n, b = args.eval_users, args.eval_batch
    _sync(dev)
    t0 = time.perf_counter()
    for lo in range(0, n, b):
        m = min(b, n - lo)
        users = torch.randn(m, args.hidden, device=dev, generator=g)
        targets = torch.randint(1, args.items + 1, (m,), device=dev, generator=g)
        chunked_rank_parts(users, items, targets, chunk=args.item_chunk, k=10)
    _sync(dev)
    sec = time.perf_counter() - t0
    return {"eval_users": n, "items": args.items, "seconds": sec, "users_per_s": n / sec,
            "seconds_per_1M_users": 1e6 * sec / n, "peak_mb": round(_peak_mb(dev))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--negatives", type=int, default=1024)
    p.add_argument("--ce-chunk", type=int, default=65536, help="objective.chunk_size of ce-chunked")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=OBJECTIVES)
    p.add_argument("--max-logits-gb", type=float, default=6.0,
                   help="skip plain ce when B * L * items * 4 bytes * 2 (logits + gradient) exceeds this")
    p.add_argument("--eval-users", type=int, default=2048, help="0 = no evaluation benchmark")
    p.add_argument("--eval-batch", type=int, default=512)
    p.add_argument("--item-chunk", type=int, default=65536)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: one objective, or "eval"
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(time_eval(args) if args.one == "eval" else time_step(args, args.one)))
        return
    print(json.dumps({"uptime": os.popen("uptime").read().strip(), "device": args.device, "items": args.items,
                      "batch": args.batch, "max_len": args.max_len, "hidden": args.hidden,
                      "threads": torch.get_num_threads()}))
    runs = [o for o in args.objectives]
    if "ce" in runs and args.batch * args.max_len * args.items * 8 / 1e9 > args.max_logits_gb:
        runs.remove("ce")
        print(json.dumps({"objective": "ce", "skipped": f"logits + gradient need "
                          f"{args.batch * args.max_len * args.items * 8 / 1e9:.1f} GB > --max-logits-gb"}))
    if args.eval_users:
        runs.append("eval")
    for one in runs:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", one]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else \
            json.dumps({"run": one, "failed": out.stderr.strip().splitlines()[-1:]})
        print(line, flush=True)
    print(json.dumps({"uptime": os.popen("uptime").read().strip()}))


if __name__ == "__main__":
    main()
