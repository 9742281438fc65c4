"""Training-step and validation cost of a faithful LLM-ESR preset on a prepared dataset, now and on the former
full-width path (issue #11).

LLM-ESR's backbone has no key-padding mask (``mask_padding: false``), so every padding position of the code's
``max_len``-wide batches is an attention key. The backbone used to encode every batch left-padded to
``max_len`` (200 in the presets); it now encodes the trimmed batch with one column standing for the missing
padding keys (``models/sasrec.py``), and evaluation drops the columns that are padding in every row. Same values
(tests: ``test_unmasked_padding_keys_collapse_to_one_column``,
``test_inference_drops_all_padding_columns_without_changing_states``). ``--mode full-width`` re-creates the
former cost: evaluation histories stay ``max_len`` wide, and a transformer without a key-padding mask pads every
``encode`` input to ``max_len`` (student, self-distillation teacher, evaluation); GRU4Rec trained on trimmed
batches before too.

One thread; CPU seconds (``time.process_time``) next to wall seconds, and the load average.

Example (the issue #11 measurement; the table's synthetic data with its text store)::

    python benchmarks/llmesr_speed.py /tmp/tables/data/synthetic --preset configs/presets/llmesr-sasrec.yaml
    python benchmarks/llmesr_speed.py DATA --preset configs/presets/llmesr-bert4rec.yaml --teacher epoch
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmseqrec.cli.train import build_experiment
from mmseqrec.train import Trainer


def full_width(backbone: torch.nn.Module) -> None:
    """The former path: no trimming of evaluation histories; with ``mask_padding: false`` every ``encode``
    input padded to ``max_len``."""
    backbone.trim_invariant = False
    if getattr(backbone, "mask_padding", True):
        return
    encode = backbone.encode

    def padded(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, extra = h.shape[1], backbone.max_len - h.shape[1]
        return encode(F.pad(h, (0, 0, extra, 0)), F.pad(mask, (extra, 0)))[:, -n:]

    backbone.encode = padded


def measure(data: Path, preset: Path, mode: str, teacher: str, steps: int, warmup: int) -> dict[str, float]:
    sets = [f"regularizers=[{{name: self-distill, embedding: text, teacher: {teacher}}}]", "train.num_threads=1",
            "train.progress=false", "eval.protocol=full"]
    cfg = build_experiment(preset, data=data, sets=sets, seed=42)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp) / "run")
        if mode == "full-width":
            full_width(tr.model.backbone)
        model = tr.model.train()
        batches = [b for _, b in tr.batches.epoch(cfg.seed, 0)]
        for reg in model.regularizers:
            getattr(reg, "on_epoch_start", lambda m: None)(model)

        def step(b) -> None:
            total, _ = model.loss(b)
            tr.optimizer.zero_grad(set_to_none=True)
            total.backward()
            tr.optimizer.step()

        for b in batches[:warmup]:
            step(b)
        timed = [batches[(warmup + i) % len(batches)] for i in range(steps)]
        c0, w0 = time.process_time(), time.perf_counter()
        for b in timed:
            step(b)
        cpu_step, wall_step = (time.process_time() - c0) / steps, (time.perf_counter() - w0) / steps
        c0, w0 = time.process_time(), time.perf_counter()
        tr.evaluate_valid()
        cpu_eval, wall_eval = time.process_time() - c0, time.perf_counter() - w0
    return {"cpu_s_per_step": cpu_step, "wall_s_per_step": wall_step, "steps_per_epoch": len(batches),
            "cpu_s_epoch_train": cpu_step * len(batches), "cpu_s_valid": cpu_eval, "wall_s_valid": wall_eval}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="prepared dataset directory with the preset's embedding store")
    ap.add_argument("--preset", type=Path, default=Path("configs/presets/llmesr-sasrec.yaml"))
    ap.add_argument("--teacher", choices=["step", "epoch"], default="step")
    ap.add_argument("--mode", choices=["both", "now", "full-width"], default="both")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    modes = ["now", "full-width"] if args.mode == "both" else [args.mode]
    for mode in modes:
        load = os.getloadavg()[0]
        res = measure(args.data, args.preset, mode, args.teacher, args.steps, args.warmup)
        print(json.dumps({"preset": args.preset.name, "teacher": args.teacher, "mode": mode,
                          **{k: round(v, 3) for k, v in res.items()},
                          "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
