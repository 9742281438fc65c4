"""Seconds per user of yes/no scoring: one shared-prefix packed forward vs one ``generate`` call per candidate.

For ``--users`` users the ``--candidates`` (21) prompts of MLLM-MSR's recommendation template are scored with
:class:`mmseqrec.llmrec.scoring.YesNoScorer`, in these ways (``--ways``):

* ``msr``: MLLM-MSR's test script as written (``test/microlens/test_with_llava_sft.py``): the (user, candidate)
  rows in user order, ``generate(max_new_tokens=30, output_scores=True)`` on left-padded batches of 6 rows
  (greedy; stops when every row of the batch has ended its answer), p(yes) from ``scores[0]``;
* ``generate``: one ``generate(max_new_tokens=1)`` call per candidate (the least any generate-per-candidate
  scorer can do);
* ``each``: one plain forward per candidate;
* ``shared``: ours (:meth:`~mmseqrec.llmrec.scoring.YesNoScorer.score_users`): per user the common prompt
  prefix once (on the cache of the previous user's, cut back to the shared head), then all suffixes packed into
  one sequence, logits at the 21 answer positions only.

All ways give the same p(yes) (max abs difference printed). Prompt shapes (``--shape``):

* ``synthetic``: a 120-word preference, 3-word titles, 30-word descriptions (the first benchmark's shapes);
* ``ml``: the real rows of a candidate file on a prepared dataset with preference summaries (``--data DIR
  --lists FILE``; ml-latest-small: SmolLM2's recurrent summaries, title + genres as the candidate text).

Cost is measured as **CPU seconds** of this process (``time.process_time``; run with ``--threads 1`` so it does
not depend on the machine's load) next to wall seconds and the load average (``os.getloadavg``); the token
counts give the bound a shared prefix can reach on a CPU, where cost follows the tokens processed:
``C * L / (P + C * S)`` (C candidates, L tokens per full prompt, P prefix and S mean suffix tokens).
``--sft-steps N`` also times N LoRA SFT steps (samples/s, peak CUDA memory) on the same prompts. ``--random 2b``
uses a randomly initialised Qwen2-VL-2B-shaped *text* model (Llama layout, 1536-d, 28 layers, 151k vocabulary;
speed depends on the shape only) instead of ``--model``: the GPU measurement when one is lent.

Examples::

    python benchmarks/llmrec_speed.py --model smollm2 --threads 1 --users 3                 # synthetic shapes
    python benchmarks/llmrec_speed.py --model smollm2 --threads 1 --users 3 --shape ml \
        --data DATA/ml-latest-small --lists lists.parquet
    python benchmarks/llmrec_speed.py --random 2b --device cuda --users 20 --sft-steps 20 --ways shared,msr
    python benchmarks/llmrec_speed.py --random tiny --users 2                                  # smoke run
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


def _ml_prompts(data: str, candidates: str, n_users: int) -> list[list[str]]:
    """The first ``n_users`` valid/test rows of a candidate file, rendered as the run renders them."""
    from mmseqrec.data.dataset import DatasetDir
    from mmseqrec.llmrec.candidates import read_candidate_set
    from mmseqrec.llmrec.prompts import load_prompt_texts

    ds = DatasetDir(data)
    cs = read_candidate_set(candidates, ds.n_items)
    rows = [r for r in range(cs.users.size) if cs.split[r] != "train"][:n_users]
    texts = load_prompt_texts(ds, cs.users[rows])
    return [texts.prompts(cs.users[r], cs.candidates[r]) for r in rows]


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 or a local chat model directory")
    ap.add_argument("--random", choices=("tiny", "2b"), default=None, help="a random model of this shape instead")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=21)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--ways", default="shared,generate,msr", help="comma list of shared, generate, msr, each")
    ap.add_argument("--shape", choices=("synthetic", "ml"), default="synthetic")
    ap.add_argument("--adapter", default=None, help="a trained run's adapter directory (RUN/adapter): a tuned "
                    "model answers and stops, which shortens msr's generation")
    ap.add_argument("--data", default=None, help="--shape ml: prepared dataset with preference summaries")
    ap.add_argument("--candidates-file", "--lists", dest="lists", default=None, help="--shape ml: candidate file")
    ap.add_argument("--sft-steps", type=int, default=0)
    ap.add_argument("--sft-batch", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from mmseqrec.llmrec.run import load_lm, resolve_model
    from mmseqrec.llmrec.scoring import YesNoScorer, _common_prefix, chat_ids

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
    if args.adapter:
        import peft

        model = peft.PeftModel.from_pretrained(model, args.adapter)
        name += f"+{args.adapter}"
    model.eval()
    if args.device.startswith("cuda"):
        model.to(torch.bfloat16)
    if args.shape == "ml":
        if not (args.data and args.lists):
            ap.error("--shape ml needs --data and --lists")
        users = _ml_prompts(args.data, args.lists, args.users)
    else:
        users = _prompts(args.users, args.candidates)
    scorer = YesNoScorer(model, tok, args.device)
    scorer.score_users(users[:1])  # warm-up
    ids = [[chat_ids(tok, p) for p in u] for u in users]
    prefix = [_common_prefix(u) for u in ids]
    full = float(np.mean([len(s) for u in ids for s in u]))
    suffix = float(np.mean([len(s) - k for u, k in zip(ids, prefix, strict=True) for s in u]))
    heads = [_common_prefix([a[0][:ka], b[0][:kb]]) for a, ka, b, kb in zip(ids, prefix, ids[1:], prefix[1:])]
    c = float(np.mean([len(u) for u in users]))
    p, h = float(np.mean(prefix)), float(np.mean(heads)) if heads else 0.0
    res: dict[str, object] = {
        "model": name, "device": args.device, "shape": args.shape, "users": len(users), "candidates": c,
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "tokens": {"prompt": full, "prefix": p, "suffix": suffix, "head_shared_across_users": h,
                   "bound_shared_vs_per_candidate": c * full / (p + c * suffix),
                   "bound_with_head_reuse": c * full / (p - h + c * suffix)}}
    print(json.dumps(res["tokens"]), file=sys.stderr, flush=True)
    outs = {}
    calls = {"shared": lambda: scorer.score_users(users),
             "generate": lambda: [scorer.score_generate(u) for u in users],
             "msr": lambda: np.split(scorer.score_generate([q for u in users for q in u], batch_size=6,
                                                           max_new_tokens=30),
                                     np.cumsum([len(u) for u in users])[:-1]),
             "each": lambda: [scorer.score_each(u) for u in users]}
    for way in args.ways.split(","):
        scorer.forwards = scorer.generated = 0
        load0, t0, c0 = _loadavg(), time.perf_counter(), time.process_time()
        outs[way] = np.concatenate(calls[way]())
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        res[way] = {"cpu_s_per_user": cpu / len(users), "wall_s_per_user": wall / len(users),
                    "calls_per_user": scorer.forwards / len(users), "loadavg_1m": [load0, _loadavg()]}
        if way in ("msr", "generate"):
            res[way]["generated_tokens_per_row"] = scorer.generated / outs[way].size
        print(f"{way}: {res[way]}", file=sys.stderr, flush=True)
    if "shared" in outs:
        for way, got in outs.items():
            if way != "shared":
                res[f"speedup_cpu_{way}"] = res[way]["cpu_s_per_user"] / res["shared"]["cpu_s_per_user"]
                res[f"max_abs_diff_{way}"] = float(np.abs(outs["shared"] - got).max())
    if args.sft_steps:
        import peft

        from mmseqrec.llmrec.scoring import answer_loss, collate_sft, encode_sft

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
                loss = answer_loss(pm, {k: v.to(args.device) for k, v in b.items()})
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
