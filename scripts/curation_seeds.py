"""Claim 4 at more seeds: run a params file's curation at extra seeds, then print the data efficiency
of those seeds alone and pooled with the seeds notebook 07 ran (`curation_seeds`).

    .venv/bin/python scripts/curation_seeds.py --seeds 3 4 5 --strategies premem iid most_steps

The extra chains go to <curation folder>-seeds<...>/ beside the params' own curation folder, so the
table notebook 07 reads keeps its own seeds. Run notebook 07 (or `premem reproduce --only 07`) first.
Not a test: run it and read.

2026-11-27, params/tiny.yaml, 2 cores, 24 runs in ~12 min. Seeds 3-5 alone: premem 1.36x
[0.90, 1.68] (round 1) and 1.03x [0.74, 1.29] (round 2), most_steps 1.18x and 1.30x; pooled with
seeds 0-2 (6 seeds): premem 1.51x [1.14, 1.68] and 1.23x [1.04, 1.42], most_steps 1.37x [1.04, 1.56]
and 1.33x [1.24, 1.41].
"""
from __future__ import annotations

import argparse

import pandas as pd

from premem import config, curation


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params/tiny.yaml")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--strategies", nargs="+", default=["premem", "iid"], help="must include iid")
    args = p.parse_args()

    cfg = config.load_params(args.params)
    own = curation.folder_of(cfg)
    if not (own / "curation.parquet").exists():
        raise SystemExit(f"{own}/curation.parquet is missing: run notebook 07 on {args.params} first")
    if set(args.seeds) & set(cfg.curation_seeds):
        raise SystemExit(f"--seeds {args.seeds} overlap {args.params}'s curation_seeds {cfg.curation_seeds}")
    extra = cfg.model_copy(update=dict(curation_seeds=args.seeds, curation_strategies=args.strategies))
    folder = curation.curate(extra, out=own.parent / f"{own.name}-seeds{'-'.join(map(str, args.seeds))}")

    new = pd.read_parquet(folder / "curation.parquet")
    old = pd.read_parquet(own / "curation.parquet")
    print(new.pivot_table(index=["strategy", "round"], columns="seed", values="test_acc").round(3).to_string())
    for name, table in [(f"seeds {args.seeds}", new),
                        ("pooled with seeds " + str(cfg.curation_seeds),
                         pd.concat([old[old.strategy.isin(args.strategies)], new], ignore_index=True))]:
        eff = curation.data_efficiency(table)
        curve = table[table.strategy == "iid"].groupby("n_examples").test_acc.mean()
        print(f"\n{name}: i.i.d. curve " + ", ".join(f"{a:.3f} ({n})" for n, a in curve.items()))
        print(eff[["strategy", "round", "n_examples", "test_acc", "ratio", "ratio_lo", "ratio_hi", "n_seeds"]]
              .round(3).to_string(index=False))


if __name__ == "__main__":
    main()
