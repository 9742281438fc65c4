"""`make demo`, step 2b: did the demo's models learn? (issue #9.4; the demo fails loudly when not)

1. Every trained backbone beats training popularity under full ranking (HR@10, paired Wilcoxon, Holm-adjusted
   over the demo table, p < 0.05), read from the experiment's results.csv.
2. Its recommendations depend on the history: an animation history and a horror history get different top-5
   lists (popularity would return the same list for both), printed with titles.

Usage: python scripts/demo_check.py EXPERIMENT_DIR   (the `--out` folder of configs/experiments/demo-backbones.yaml)
Exit 1 with the reasons when a check fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from mmseqrec.serve.recommend import recommend

# MovieLens ids (ml-latest-small; all rated at least 5 times, so they survive the demo's item filter)
HISTORIES = {
    "animation": ["1", "364", "588", "595", "594"],  # Toy Story, Lion King, Aladdin, Beauty and the Beast, Snow White
    "horror": ["1258", "1407", "1997", "1347", "1982"],  # Shining, Scream, Exorcist, Nightmare on Elm St, Halloween
}
ALPHA = 0.05
TRAINED = ("sasrec", "bert4rec", "gru4rec")


def main(out: Path) -> int:
    hr10 = pl.read_csv(out / "results.csv").filter((pl.col("protocol") == "full") & (pl.col("metric") == "HR@10"))
    table = hr10.filter(pl.col("backbone").is_in(TRAINED))
    pop = hr10.filter(pl.col("backbone") == "pop")
    failures = []
    print("   backbone  HR@10   Pop HR@10  p vs Pop (Holm); then its top-5 for an animation and a horror history")
    pop_hr = pop["mean"][0] if len(pop) else float("nan")
    for row in table.iter_rows(named=True):
        name, p = row["backbone"], row["p_adj_vs_Pop"]
        print(f"   {name:<9} {row['mean']:.4f}  {pop_hr:.4f}     {p if p is None else f'{p:.2g}'}")
        if p is None or not p < ALPHA:
            failures.append(f"{name} does not beat popularity under full ranking (Holm p = {p})")
        runs = sorted((out / "runs").glob(f"*/{row['variant']}/{name}/seed*"))
        if not runs:
            failures.append(f"{name}: no run directory under {out / 'runs'}")
            continue
        tops = {g: recommend(runs[0], h, k=5) for g, h in HISTORIES.items()}
        for g, r in tops.items():
            print(f"      {g:<9}: " + "; ".join(t for _, t, _ in r.items))
        if [i[0] for i in tops["animation"].items] == [i[0] for i in tops["horror"].items]:
            failures.append(f"{name} returns the same top-5 for an animation and a horror history")
    if not len(table):
        failures.append(f"no trained backbone in {out / 'results.csv'}")
    if failures:
        print("DEMO CHECK FAILED: the models did not learn:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"   check passed: every backbone beats popularity (Holm p < {ALPHA}) and personalises its top-5")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
