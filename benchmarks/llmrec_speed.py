"""Seconds per user of yes/no scoring: one shared-prefix batched forward vs one ``generate`` call per candidate.

For each of ``--users`` synthetic users (a ~120-word preference summary, as SmolLM2's recurrent summaries are)
the ``--candidates`` (21) prompts of MLLM-MSR's recommendation template are scored three ways with
:class:`mmseqrec.llmrec.scoring.YesNoScorer`:

* ``generate``: one ``model.generate(max_new_tokens=1)`` call per candidate, reading the first position's logits
  (what MLLM-MSR's test script does, one pair at a time);
* ``each``: one plain forward per candidate (no generate overhead);
* ``shared``: the user's common prompt prefix once + all suffixes as one batch on its KV cache (ours).

The three give the same p(yes) (checked, max abs difference printed). ``--sft-steps N`` also times N LoRA SFT
steps (samples/s, peak CUDA memory) on the same prompts. ``--random 2b`` uses a randomly initialised
Qwen2-VL-2B-shaped *text* model (Llama layout, 1536-d, 28 layers, 151k vocabulary; speed depends on the shape
only) instead of ``--model``: the GPU measurement when one is lent.

Examples::

    python benchmarks/llmrec_speed.py --model smollm2 --users 10                  # CPU, SmolLM2-135M-Instruct
    python benchmarks/llmrec_speed.py --random 2b --device cuda --users 20 --sft-steps 20
    python benchmarks/llmrec_speed.py --random tiny --users 2                      # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_WORDS = ["comedy", "drama", "thriller", "romance", "animation", "action", "adventure", "science", "fiction", "documentary", "crime", "mystery", "family", "fantasy", "horror", "musical", "western", "war", "history", "biography", "sport"]


def _prompts(n_users: int, n_cand: int, seed: int = 0) -> list[list[str]]:
    import numpy as np

    from mmseqrec.llmrec.prompts import RECOMMEND

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        pref = "The user appears to have a preference for " + " ".join(rng.choice(_WORDS, 120)) + "."
        out.append([RECOMMEND.render(preference=pref, title=" ".join(rng.choice(_WORDS, 3)).title(),
                                     description=" ".join(rng.choice(_WORDS, 30)) + ".") for _ in range(n_cand)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 or a local chat model directory")
    ap.add_argument("--random", choices=("tiny", "2b"), default=None, help="a random model of this shape instead")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=21)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--skip-generate", action="store_true", help="only the shared path (large models)")
    ap.add_argument("--sft-steps", type=int, default=0)
    ap.add_argument("--sft-batch", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from mmseqrec.llmrec.run import load_lm, resolve_model
    from mmseqrec.llmrec.scoring import YesNoScorer, chat_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.random:
            from mmseqrec.llmrec.random_lm import build_random_lm

            path = build_random_lm(f"{tmp}/lm", size=args.random)
            name = f"random-{args.random}"
        else:
            path = resolve_model(args.model)
            name = str(args.model)
        model, tok = load_lm(path, args.device)
    model.eval()
    if args.device.startswith("cuda"):
        model.to(torch.bfloat16)
    users = _prompts(args.users, args.candidates)
    scorer = YesNoScorer(model, tok, args.device)
    scorer.score_shared(users[0])  # warm-up
    res: dict[str, object] = {"model": name, "device": args.device, "users": args.users,
                              "candidates": args.candidates, "threads": torch.get_num_threads(),
                              "python": platform.python_version(), "torch": torch.__version__,
                              "prompt_tokens": len(chat_ids(tok, users[0][0]))}
    outs = {}
    for way in ("shared", "each", "generate"):
        if way != "shared" and args.skip_generate:
            continue
        fn = getattr(scorer, f"score_{way}")
        scorer.forwards = 0
        t0 = time.perf_counter()
        outs[way] = np.stack([fn(p) for p in users])
        dt = time.perf_counter() - t0
        res[way] = {"seconds_per_user": dt / args.users, "calls_per_user": scorer.forwards / args.users}
        print(f"{way}: {res[way]}", file=sys.stderr, flush=True)
    if "generate" in outs:
        res["speedup_vs_generate"] = res["generate"]["seconds_per_user"] / res["shared"]["seconds_per_user"]
        res["max_abs_diff"] = float(np.abs(outs["shared"] - outs["generate"]).max())
    if args.sft_steps:
        import peft

        from mmseqrec.llmrec.scoring import collate_sft, encode_sft

        model.float().train()
        pm = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                        task_type="CAUSAL_LM"))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
        ex = [encode_sft(tok, p, k % 2 == 0) for u in users for k, p in enumerate(u[:2])]
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for s in range(args.sft_steps):
            b = collate_sft([ex[(s * args.sft_batch + j) % len(ex)] for j in range(args.sft_batch)], scorer.pad_id)
            with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16,
                                enabled=args.device.startswith("cuda")):
                loss = pm(**{k: v.to(args.device) for k, v in b.items()}).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            res["sft_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["sft_samples_per_s"] = args.sft_steps * args.sft_batch / (time.perf_counter() - t0)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
