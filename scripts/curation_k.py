"""Claim 4: does a finer per-example estimate select better? Runs a params file's curation with
curation_k samples per original and compares it, seed by seed, with the same chains at the params'
own k (notebook 07's folder and the folders of scripts/curation_seeds.py).

    .venv/bin/python scripts/curation_k.py --k 16 --seeds 0 1 2 3 4 5 --strategies premem iid most_steps forgetting

Only the originals' samples change (k_test stays): a seed's runs train identically under either k
until a selection differs, so iid's chain, which reads no samples, must come out identical (checked).
Prints, per selecting strategy and seed, how many originals round 1 selected under each k and the
overlap of the two selections; the data efficiency of both; and `curation.paired_gaps` with the
finer premem as reference (its gap to premem at the params' k is the effect of k alone). Keeps the
tables, with a JSON of what made them, in <curation folder at --k>/compare-k<k>/.
Not a test: run it and read. Run notebook 07 and scripts/curation_seeds.py for the seeds first.

2026-11-28, params/tiny.yaml, constraints-cpu.txt, 2 cores, seeds 0-5. `--k 16 --strategies premem
iid most_steps forgetting` (36 min): disjoint draws of 4 share 52-62% of their selections; at t =
0.75 k = 16 selects 42 originals, not 56, and premem's round-1 ratio is 1.14x [0.97, 1.45] against
1.51x [1.14, 1.68] at k = 4 (paired -0.019 [-0.039, 0.001]). `--k 16 --threshold 0.875 --strategies
premem iid` (23 min; 60 selected): 1.19x [0.95, 1.38], paired -0.017 [-0.033, -0.001].
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from premem import config, curation, io, metrics, record


def own_k_tables(own: Path, seeds, strategies) -> tuple[pd.DataFrame, dict]:
    """The curation rows and round-1 selections at the params' own k, from its folder and its
    extra-seed folders (<folder>-seeds...)."""
    folders = [own, *sorted(own.parent.glob(f"{own.name}-seeds*"))]
    table = pd.concat([pd.read_parquet(f / "curation.parquet") for f in folders if (f / "curation.parquet").exists()])
    table = table[table.seed.isin(seeds) & table.strategy.isin(strategies)].drop_duplicates(["strategy", "round", "seed"])
    selections = {p.stem: pd.read_parquet(p) for f in folders for p in (f / "selections").glob("*_r1_seed*.parquet")}
    return table, selections


def draw_agreement(folder: Path, dyn, k0: int, threshold: float, tau: float) -> dict:
    """How reproducible a selection from k0 samples is: the run's k samples per original and
    checkpoint split into k // k0 disjoint draws of k0, each draw's final pre-mem accuracy and
    selection (<= threshold); mean Jaccard overlap and Spearman correlation between draws."""
    s = pd.read_parquet(folder / "samples.parquet", filters=[("run", "==", dyn.run), ("split", "==", "train")])
    pre = []
    for draw in range((s.sample_idx.max() + 1) // k0):
        acc = s[s.sample_idx // k0 == draw].pivot_table(index="step", columns="example_id", values="correct")
        pre.append(pd.Series(metrics.pre_mem_acc(acc.reindex(index=dyn.steps, columns=dyn.example_ids).to_numpy(float),
                                                 dyn.perplexity, tau)[-1]))
    pairs = [(a, b) for i, a in enumerate(pre) for b in pre[i + 1:]]
    jac = [((a <= threshold) & (b <= threshold)).sum() / ((a <= threshold) | (b <= threshold)).sum() for a, b in pairs]
    return dict(run=dyn.run, draws=len(pre), selected=np.mean([(p <= threshold).sum() for p in pre]),
                jaccard=np.mean(jac), spearman=np.mean([a.corr(b, method="spearman") for a, b in pairs]))


def tagged(table: pd.DataFrame, label: str) -> pd.DataFrame:
    """Strategy names with their setting ("premem@k16"); iid keeps its name: the i.i.d. curve is shared."""
    return table.assign(strategy=table.strategy.where(table.strategy == "iid", table.strategy + f"@{label}"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params/tiny.yaml")
    p.add_argument("--k", type=int, required=True, help="samples per original at each curation checkpoint")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--strategies", nargs="+", default=["premem", "iid"], help="must include premem and iid")
    p.add_argument("--threshold", type=float, help="curation_threshold at --k (default: the params'): a finer "
                   "estimate moves what a threshold means (with 4 samples 0.75 is 'not 4 of 4 right')")
    args = p.parse_args()

    if not {"premem", "iid"} <= set(args.strategies):
        raise SystemExit(f"--strategies {args.strategies} must include premem and iid")
    cfg = config.load_params(args.params)
    k0 = cfg.curation_k or cfg.k
    t = cfg.curation_threshold if args.threshold is None else args.threshold
    if args.k == k0:
        raise SystemExit(f"--k {args.k} is {args.params}'s own")
    mine, theirs = f"k{args.k}" + ("" if t == cfg.curation_threshold else f"_t{t:g}"), f"k{k0}"
    own = curation.folder_of(cfg)
    base, base_sel = own_k_tables(own, args.seeds, args.strategies)
    have = base.groupby("strategy").seed.unique().map(set)
    if missing := {s: sorted(set(args.seeds) - have.get(s, set())) for s in args.strategies
                   if set(args.seeds) - have.get(s, set())}:
        raise SystemExit(f"no runs at k={k0} for {missing} in {own}[-seeds*]: run notebook 07 / "
                         "scripts/curation_seeds.py for them first")
    finer = cfg.model_copy(update=dict(curation_k=args.k, curation_threshold=t, curation_seeds=args.seeds,
                                       curation_strategies=args.strategies))
    folder = curation.curate(finer)
    new = pd.read_parquet(folder / "curation.parquet")
    new = new[new.seed.isin(args.seeds) & new.strategy.isin(args.strategies)]

    key = ["strategy", "round", "seed"]
    iid = new[new.strategy == "iid"].set_index(key).test_acc - base[base.strategy == "iid"].set_index(key).test_acc
    if iid.abs().max() != 0:  # the pairing below assumes both k share every run nothing selected
        raise SystemExit(f"iid chains differ between {mine} and {theirs} (max |diff| {iid.abs().max():.3g}): "
                         "not the same environment or params?")
    print(f"iid chains at {mine} and {theirs}: identical, as they read no samples")

    tau_cfg = curation.curation_params(finer)
    dyns = [d for d in record.read_runs(folder) if d.run.startswith("originals_seed")]
    agreement = pd.DataFrame([draw_agreement(folder, d, k0, cfg.curation_threshold, metrics.chosen_tau(tau_cfg, [d])[0])
                              for d in dyns])
    print(f"\nthe originals runs' {args.k} samples as disjoint draws of {k0}: how alike two draws' premem selections are")
    print(agreement.round(3).to_string(index=False))

    rows = []
    for s in sorted(set(args.strategies) - {"iid"}):
        for seed in args.seeds:
            a = base_sel[curation.run_name(s, 1, seed)]
            b = pd.read_parquet(folder / "selections" / f"{curation.run_name(s, 1, seed)}.parquet")
            sa, sb = set(a.example_id[a.selected]), set(b.example_id[b.selected])
            rows.append(dict(strategy=s, seed=seed, **{f"selected_{theirs}": len(sa), f"selected_{mine}": len(sb)},
                             jaccard=len(sa & sb) / len(sa | sb), **{f"pre_mem_{theirs}": a.pre_mem_acc.mean(),
                                                                     f"pre_mem_{mine}": b.pre_mem_acc.mean()}))
    selections = pd.DataFrame(rows)
    print(f"\nround-1 selections, {theirs} against {mine}:")
    print(selections.groupby("strategy").mean(numeric_only=True).drop(columns="seed").round(3).to_string())

    both = pd.concat([tagged(new, mine), tagged(base[base.strategy != "iid"], theirs)], ignore_index=True)
    eff, gaps = curation.data_efficiency(both), curation.paired_gaps(both, reference=f"premem@{mine}")
    print(f"\nseeds {args.seeds}: data efficiency")
    print(eff[["strategy", "round", "n_examples", "test_acc", "ratio", "ratio_lo", "ratio_hi", "n_seeds"]]
          .round(3).to_string(index=False))
    print(f"\npremem@{mine}'s test accuracy minus each, seed by seed (curation.paired_gaps):")
    print(gaps.round(3).to_string(index=False))
    out = folder / f"compare-k{k0}"
    for name, table in dict(curation=both, efficiency=eff, gaps=gaps, selections=selections, draws=agreement).items():
        io.write_parquet(out / f"{name}.parquet", table)
    io.write_json(out / "config.json", dict(params=args.params, k=args.k, threshold=t, own_k=k0, seeds=args.seeds,
                                            strategies=args.strategies, own_folder=str(own), folder=str(folder)))


if __name__ == "__main__":
    main()
