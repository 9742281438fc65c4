"""Training-step and full-ranking evaluation speed of a sequence model at a given shape (random data).

Default flags are a reduced CPU shape; ``--preset ml-1m`` gives the ML-1M shape of issue #3 (6,040 users,
3,416 items, max length 200, hidden 64, 2 layers, batch 256). Any item encoder in the registry can be timed
(``--item-encoder dmesr --set item_encoder.x=y``): its embedding stores are replaced by random frozen
matrices of ``--feature-dim`` columns.

Examples::

    python benchmarks/train_speed.py                                  # CPU, reduced shape
    python benchmarks/train_speed.py --preset ml-1m --device cuda --compile --bf16
    python benchmarks/train_speed.py --preset ml-1m --device cuda --item-encoder content \\
        --set item_encoder.embedding=text
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmseqrec.models.sequence import Batch
from mmseqrec.train.config import load_experiment
from mmseqrec.train.run import build_model

PRESETS = {
    "cpu-small": {"users": 1024, "items": 3416, "max_len": 50, "hidden": 64, "layers": 2, "batch": 128,
                  "steps": 10},
    "ml-1m": {"users": 6040, "items": 3416, "max_len": 200, "hidden": 64, "layers": 2, "batch": 256,
              "steps": 50},
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_objective(args, objective: str, dev: torch.device) -> dict:
    sets = [f"model.name={args.model}", f"model.n_layers={args.layers}", f"train.max_len={args.max_len}",
            f"item_encoder.name={args.item_encoder}", f"objective.name={objective}",
            f"objective.n_negatives={args.negatives}", *args.set]
    cfg = load_experiment(None, sets)
    if "dim" in type(cfg.item_encoder).model_fields:
        cfg.item_encoder.dim = args.hidden
    torch.manual_seed(0)
    tensors = {n: torch.randn(args.items + 1, args.feature_dim) for n in cfg.item_encoder.embeddings()}
    model = build_model(cfg, args.items, tensors).to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                            fused=dev.type == "cuda")
    loss_fn = model.loss
    if args.compile:
        loss_fn = torch.compile(model.loss, mode=args.compile_mode)
    seq = torch.randint(1, args.items + 1, (args.batch, args.max_len + 1), device=dev)
    users = torch.arange(args.batch, device=dev)
    batch = Batch(seq=seq, users=users)
    use_bf16 = args.bf16 and dev.type == "cuda"

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            total, _ = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    model.train()
    for _ in range(args.warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(dev)
    ms = (time.perf_counter() - t0) / args.steps * 1000
    targets = args.batch * (args.max_len if cfg.objective.positions == "all" else 1)
    if model.bidirectional:
        targets = None  # cloze: a random number of targets per step
    return {"objective": objective, "ms_per_step": ms,
            "targets_per_s": None if targets is None else targets / ms * 1000, "model": model, "cfg": cfg}


@torch.no_grad()
def time_eval(model, args, dev: torch.device) -> dict:
    """Encode every user (chunks of ``--eval-batch``), score all items, take the top 10."""
    model.eval()
    hist = torch.randint(1, args.items + 1, (args.users, args.max_len), device=dev)
    use_bf16 = args.bf16 and dev.type == "cuda"

    def run():
        out = []
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            for lo in range(0, args.users, args.eval_batch):
                out.append(torch.topk(model.score_all(hist[lo:lo + args.eval_batch]), 10).indices)
        return torch.cat(out)

    run()
    _sync(dev)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        run()
    _sync(dev)
    return {"eval_ms": (time.perf_counter() - t0) / reps * 1000}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    for k in ("users", "items", "max_len", "hidden", "layers", "batch", "steps"):
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--model", default="sasrec")
    p.add_argument("--objectives", default="bce,sampled-softmax,ce,gbce")
    p.add_argument("--negatives", type=int, default=256)
    p.add_argument("--item-encoder", default="id")
    p.add_argument("--feature-dim", type=int, default=768, help="width of random frozen feature matrices")
    p.add_argument("--set", action="append", default=[], help="experiment override key=value")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default=None, help="e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--eval-batch", type=int, default=1024)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    rows = []
    for obj in [o.strip() for o in args.objectives.split(",") if o.strip()]:
        r = time_objective(args, obj, dev)
        model = r.pop("model")
        r.pop("cfg")
        rows.append(r)
    ev = time_eval(model, args, dev)

    from rich.console import Console
    from rich.table import Table

    shape = (f"{args.model}+{args.item_encoder}: users {args.users}, items {args.items}, L {args.max_len}, "
             f"d {args.hidden}, layers {args.layers}, batch {args.batch}, device {args.device}, "
             f"compile {args.compile}{'/' + args.compile_mode if args.compile_mode else ''}, bf16 {args.bf16}, "
             f"threads {torch.get_num_threads()}")
    table = Table(title=shape)
    for c in ("objective", "ms/step", "targets/s"):
        table.add_column(c, justify="right")
    for r in rows:
        tps = "-" if r["targets_per_s"] is None else f"{r['targets_per_s']:,.0f}"
        table.add_row(r["objective"], f"{r['ms_per_step']:.2f}", tps)
    console = Console()
    console.print(table)
    console.print(f"full-ranking evaluation of {args.users} users x {args.items} items (encode + score + top-10): "
                  f"{ev['eval_ms']:.1f} ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": shape, "rows": rows, **ev}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
