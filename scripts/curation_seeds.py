"""Claim 4 at more seeds: run a params file's curation at extra seeds, then print the data efficiency
of those seeds alone and pooled with the seeds notebook 07 ran (`curation_seeds`).

    .venv/bin/python scripts/curation_seeds.py --seeds 3 4 5 --strategies premem iid most_steps

The extra chains go to <curation folder>-seeds<...>/ beside the params' own curation folder, so the
table notebook 07 reads keeps its own seeds. Run notebook 07 (or `premem reproduce --only 07`) first.
Not a test: run it and read.

Prints each seed's test accuracy, the data efficiency and `curation.paired_gaps` (premem minus each
rule, seed by seed) for the new seeds alone and pooled, and keeps the pooled tables, with a JSON of
what made them, in <extra folder>/pooled/.

2026-11-27, params/tiny.yaml, constraints-cpu.txt, 2 cores: `--seeds 3 4 5 6 7 8 --strategies premem
iid most_steps forgetting`, 60 runs in 26 min. Pooled with seeds 0-2 (9 seeds): premem 1.41x
[1.16, 1.63] (round 1) and 1.15x [0.93, 1.36] (round 2), most_steps 1.21x and 1.28x, forgetting
1.17x and 1.22x; premem minus iid test accuracy +0.026 [0.006, 0.046] and +0.010 [-0.011, 0.031],
minus most_steps +0.012 [0.001, 0.023] and -0.009 [-0.024, 0.006] (paired t intervals).
"""
from __future__ import annotations

import argparse

import pandas as pd

from premem import config, curation, io


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
    pooled = pd.concat([old[old.strategy.isin(args.strategies)], new], ignore_index=True)
    for name, table in [(f"seeds {args.seeds}", new), (f"pooled with seeds {cfg.curation_seeds}", pooled)]:
        eff = curation.data_efficiency(table)
        gaps = curation.paired_gaps(table) if "premem" in args.strategies else None
        curve = table[table.strategy == "iid"].groupby("n_examples").test_acc.mean()
        print(f"\n{name}: i.i.d. curve " + ", ".join(f"{a:.3f} ({n})" for n, a in curve.items()))
        print(eff[["strategy", "round", "n_examples", "test_acc", "ratio", "ratio_lo", "ratio_hi", "n_seeds"]]
              .round(3).to_string(index=False))
        if gaps is not None:
            print(f"\n{name}, premem's test accuracy minus each rule's, seed by seed (curation.paired_gaps):")
            print(gaps.round(3).to_string(index=False))
    # The pooled tables (the last loop pass), kept with what made them: docs/findings.md quotes them.
    pooled_dir = folder / "pooled"
    io.write_json(pooled_dir / "config.json", dict(
        params=args.params, params_hash=cfg.hash(), strategies=args.strategies,
        seeds=sorted(pooled.seed.unique().tolist()), folders=[str(own), str(folder)]))
    io.write_parquet(pooled_dir / "curation.parquet", pooled)
    io.write_parquet(pooled_dir / "efficiency.parquet", eff)
    if gaps is not None:
        io.write_parquet(pooled_dir / "gaps.parquet", gaps)
    print(f"\npooled tables: {pooled_dir}")


if __name__ == "__main__":
    main()
