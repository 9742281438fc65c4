"""A served dataset for the serve tests: the synthetic dataset (rendered item images), template-only MLLM texts
(``--backend echo``) and two tiny trained runs (SASRec, GRU4Rec)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmseqrec.cli import main


def run_cli(args: list[str]) -> int:
    """Run the CLI entry point; return its exit code."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _cli(args: list[str]) -> None:
    assert run_cli(args) == 0, f"mmseqrec {' '.join(args)} failed"


def build_served(root: Path) -> dict[str, Path]:
    """``{"data": DIR, "sasrec": RUN, "gru4rec": RUN}`` under ``root``."""
    torch.set_num_threads(1)
    data = root / "syn"
    _cli(["prepare", "--format", "synthetic", "--out", str(data), "--seed", "0", "--option", "n_users=120",
          "--option", "n_items=40", "--overwrite"])
    for task in ("item-description", "user-preference"):
        _cli(["enrich", str(data), "--task", task, "--backend", "echo", "--no-progress"])
    out = {"data": data}
    for model in ("sasrec", "gru4rec"):
        _cli(["train", "--data", str(data), "--out", str(root / model), "--model", model, "--set", "train.epochs=2",
              "--set", "train.max_len=12", "--set", "item_encoder.dim=16", "--set", "train.progress=false",
              "--set", "eval.protocol=full"])
        out[model] = root / model
    return out
