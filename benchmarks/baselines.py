"""Pop and ItemKNN on prepared datasets: validation-selected options, test rows under full and sampled:100.

Default: fits ``pop``, ``itemknn`` (k 100, shrink 10) and ``itemknn`` sequential (k 100, last 5 items, decay 0.6;
the settings of the results grids) through the one trainer and prints valid/test HR@10 and NDCG@10 under every
``--protocol`` plus the fit time. ``--sweep`` instead prints validation NDCG@10 (full ranking) over a grid of
ItemKNN options, the search the grid settings were chosen from (validation only, never test).

Examples::

    mmseqrec prepare --format movielens /work/shared/data/ml-latest-small --out /tmp/ml
    python benchmarks/baselines.py /tmp/ml
    python benchmarks/baselines.py /tmp/ml --sweep
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import torch

ROWS = {
    "Pop": ["model.name=pop"],
    "ItemKNN": ["model.name=itemknn", "model.k=100", "model.shrink=10"],
    "ItemKNN-seq": ["model.name=itemknn", "model.k=100", "model.last_n=5", "model.decay=0.6"],
}


def rows(data: str, protocols: list[str]) -> None:
    from mmseqrec.train import Trainer, evaluate_model, load_experiment

    for name, sets in ROWS.items():
        cfg = load_experiment(overrides=[f"data.path={data}", "train.progress=false", "eval.ks=[10]", *sets])
        with tempfile.TemporaryDirectory() as tmp:
            t = Trainer(cfg, tmp)
            t0 = time.perf_counter()
            m = t.fit()
            wall = time.perf_counter() - t0
            for proto in protocols:
                if proto == "full":
                    valid, test = m["valid"], m["test"]
                else:
                    valid, test = (evaluate_model(t.model, es, t.split, cfg, t.device, protocol=proto,
                                                  popularity=t.popularity).metrics
                                   for es in (t.split.valid, t.split.test))
                print(f"{data}\t{name}\t{proto}\tvalid HR@10 {valid['HR@10']:.4f} NDCG@10 {valid['NDCG@10']:.4f}"
                      f"\ttest HR@10 {test['HR@10']:.4f} NDCG@10 {test['NDCG@10']:.4f}\tfit+valid+test {wall:.1f} s",
                      flush=True)


def sweep(data: str) -> None:
    from mmseqrec.data.dataset import DatasetDir
    from mmseqrec.data.split import leave_one_out
    from mmseqrec.evaluate import Protocol, evaluate_ranking
    from mmseqrec.models.baselines import ItemKNN, ItemKNNConfig
    from mmseqrec.train.run import training_sequences
    from mmseqrec.train.trainer import make_score_fn

    ds = DatasetDir(data)
    split = leave_one_out(ds.sequences)
    items, indptr = training_sequences(split.seqs, split.train_end)
    profiles = [(None, 1.0), (None, 0.8), (1, 1.0), (3, 1.0), (3, 0.6), (5, 0.6), (5, 0.4), (8, 0.4), (10, 1.0)]
    for k, shrink in itertools.product([20, 50, 100, 200, 500], [0.0, 10.0, 50.0]):
        fitted = ItemKNN(ItemKNNConfig(k=k, shrink=shrink), ds.n_items)
        fitted.fit(items, indptr)
        for last_n, decay in profiles:
            m = ItemKNN(ItemKNNConfig(k=k, shrink=shrink, last_n=last_n, decay=decay), ds.n_items)
            m.load_state_dict(fitted.state_dict())  # the profile options do not change the fitted neighbours
            r = evaluate_ranking(make_score_fn(m, torch.device("cpu")), split.valid, split.seqs,
                                 Protocol.parse("full"), (10,), max_len=m.max_len, device="cpu")
            print(f"{data}\tk={k}\tshrink={shrink}\tlast_n={last_n}\tdecay={decay}\t"
                  f"valid HR@10 {r.metrics['HR@10']:.4f} NDCG@10 {r.metrics['NDCG@10']:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="+", help="prepared dataset directories")
    ap.add_argument("--protocol", action="append", help="protocols (default: full and sampled:100)")
    ap.add_argument("--sweep", action="store_true", help="validation sweep of ItemKNN options instead")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for d in args.data:
        if args.sweep:
            sweep(d)
        else:
            rows(d, args.protocol or ["full", "sampled:100"])


if __name__ == "__main__":
    main()
