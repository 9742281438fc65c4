"""Table of LLM recommenders and sequential runs scored on one candidate file (issue #12), with the project's
statistics: the user is the unit, each variant's per-user values averaged over its seeds, two-sided paired
Wilcoxon against each reference, Holm over every (comparison, metric) of the table, seed mean +- std beside p.

Every run must have been scored under ``candidates:file=FILE`` (LLM runs: ``mmseqrec llmrec train``; sequential
runs: ``mmseqrec evaluate RUN --protocol candidates:file=FILE``); the pairs are read through the same functions as
``mmseqrec compare`` / ``experiment`` (:func:`mmseqrec.evaluate.significance.paired_test`), so a variant that
evaluated other cases is refused.

Example::

    python benchmarks/llmrec_table.py --protocol candidates:file=lists.parquet --against Pop --against SASRec \\
        Pop=runs/pop SASRec=runs/sas-42,runs/sas-43,runs/sas-44 MLLM-MSR=runs/msr-0,runs/msr-1,runs/msr-2
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="NAME=RUN[,RUN...] (one run per seed)")
    ap.add_argument("--protocol", required=True, help="candidates:file=FILE, as the runs were scored")
    ap.add_argument("--against", action="append", default=[], help="reference variant(s) every other is tested "
                    "against")
    ap.add_argument("--metrics", default="AUC,HR@5,NDCG@5,MRR@5", help="metrics shown (seed mean ± std)")
    ap.add_argument("--test-metrics", default="AUC,NDCG@5", help="metrics tested (the Holm family)")
    args = ap.parse_args()

    import polars as pl

    from mmseqrec.evaluate.runfiles import find_eval
    from mmseqrec.evaluate.significance import adjust_pvalues, aggregate_seeds, paired_test

    metrics, tested = args.metrics.split(","), args.test_metrics.split(",")
    groups: dict[str, list] = {}
    for spec in args.variants:
        name, _, runs = spec.partition("=")
        recs = []
        for run in runs.split(","):
            rec = find_eval(run, args.protocol)
            if rec is None or "test" not in rec.ranks:
                sys.exit(f"{run}: not scored under {args.protocol} (run `mmseqrec evaluate {run} --protocol "
                         f"{args.protocol}`)")
            recs.append(rec)
        groups[name] = recs
    ranks = {n: [pl.read_parquet(r.ranks["test"]) for r in recs] for n, recs in groups.items()}
    n_neg = {n: recs[0].n_negatives for n, recs in groups.items()}
    tests, keys = [], []
    for ref in args.against:
        for name in groups:
            if name == ref or name in args.against[: args.against.index(ref)]:
                continue
            for m in tested:
                t = paired_test(ranks[ref], ranks[name], m, n_negatives=n_neg[name],
                                protocol_a=args.protocol, protocol_b=args.protocol)
                tests.append(t)
                keys.append((name, ref, m))
    holm = adjust_pvalues([t["p_wilcoxon"] for t in tests], "holm") if tests else []
    p = {k: (t["p_wilcoxon"], float(h), t["n"]) for k, t, h in zip(keys, tests, holm, strict=True)}
    n_cases = {t["n"] for t in tests}
    print(f"protocol `{args.protocol}`, n = {sorted(n_cases)} test users (paired cases), "
          f"Holm over {len(tests)} (comparison, metric) pairs\n")
    head = ["variant", "seeds"] + metrics + [f"p {m} vs {r} (raw / Holm)" for r in args.against for m in tested]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, recs in groups.items():
        agg = aggregate_seeds([r.metrics("test") for r in recs])
        # one run (a single seed, or deterministic Pop) has no spread: its value alone, never "± 0.000"
        row = [name, str(len(recs))] + [f"{agg[m][0]:.3f}" + (f" ± {agg[m][1]:.3f}" if len(recs) > 1 else "")
                                         for m in metrics]
        for ref in args.against:
            for m in tested:
                v = p.get((name, ref, m))
                row.append("—" if v is None else f"{v[0]:.3g} / {v[1]:.3g}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
