"""Claim 4's measures: how many i.i.d. examples a curated run is worth (data efficiency, with a
bootstrap over seeds), premem's paired gap to each other rule, and the scaling figure. Functions of
curation.parquet's table (premem.curation writes it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from premem.config import CURATION_KEYS, Params
from premem.errors import PremError
from premem.metrics import mean_interval


def curation_params(cfg: Params) -> Params:
    """`cfg` with the sweep's grid replaced by what curation trains (one lr, one epoch count, all
    of its originals: curation_originals, else n_train, checkpoints: curation_max_checkpoints,
    samples per original: curation_k, else k), so
    the curation folder's hash, and its cache, do not change when the sweep's grid, training set or
    checkpoint spacing does.
    Seeds come from curation_seeds; the hash leaves them and curation_strategies out: each (strategy,
    seed) chain's runs carry both in their names, so adding one adds runs and reuses the others."""
    first = cfg.runs[0] if cfg.runs else None  # an explicit run list: its first run, as lrs[0] and epochs[0]
    lr = cfg.curation_lr or (first.lr if first else cfg.lrs[0])
    epochs = cfg.curation_epochs or (first.epochs if first else cfg.epochs[0])
    # curation_k replaces k for the originals' samples; k_test stays what it was (k when unset).
    samples = dict(k=cfg.curation_k, k_test=cfg.k_test or cfg.k) if cfg.curation_k else {}
    return cfg.model_copy(update=dict(lrs=[lr], epochs=[epochs], data_fractions=[1.0], seeds=[], runs=None,
                                      n_train=cfg.curation_originals or cfg.n_train, curation_originals=None,
                                      max_checkpoints=cfg.curation_max_checkpoints,
                                      curation_lr=lr, curation_epochs=epochs, curation_k=None, **samples))


def folder_of(cfg: Params) -> Path:
    """The curation folder `curate` writes for `cfg` when given no `out`: <out_dir>/curation-<hash>."""
    return cfg.path("out_dir") / f"curation-{curation_params(cfg).hash(*CURATION_KEYS)}"


def base_test_acc(folder: str | Path) -> float:
    """The base model's own test accuracy (no finetuning), as `curate` recorded it in <folder>/base.json."""
    f = Path(folder) / "base.json"
    if not f.is_file():
        raise PremError(f"no base.json in {folder}: run curation.curate on its params first")
    return float(json.loads(f.read_text())["test_acc"])


def iid_examples_needed(n_examples, test_acc, target: float) -> tuple[float, str]:
    """Examples the IID curve needs to reach `target`, by linear interpolation at its first crossing.

    Flags: "interpolated"; "at_or_below_start" (target <= the curve's first point: at most that many);
    "above_iid_max" (never reached: inf); "nan" (target unmeasured)."""
    order = np.argsort(np.asarray(n_examples, dtype=float), kind="stable")
    n, y = np.asarray(n_examples, dtype=float)[order], np.asarray(test_acc, dtype=float)[order]
    if n.size == 0:
        raise PremError("data efficiency needs an iid curve, and it is empty")
    if np.isnan(target):
        return np.nan, "nan"
    if target <= y[0]:
        return float(n[0]), "at_or_below_start"
    for j in range(1, n.size):
        if y[j - 1] < target <= y[j]:
            return float(n[j - 1] + (target - y[j - 1]) / (y[j] - y[j - 1]) * (n[j] - n[j - 1])), "interpolated"
    return np.inf, "above_iid_max"


def _ratios(table: pd.DataFrame) -> pd.DataFrame:
    """data_efficiency's point estimates, curves averaged over the seeds in `table`."""
    mean = table.groupby(["strategy", "round", "n_examples"], as_index=False).test_acc.mean()
    iid = mean[mean.strategy == "iid"]
    if iid.empty:
        raise PremError("data efficiency needs the 'iid' strategy in curation_strategies")
    curve = iid.groupby("n_examples").test_acc.mean()
    rows = []
    for r in mean[(mean.strategy != "iid") & (mean["round"] > 0)].itertuples():
        need, flag = iid_examples_needed(curve.index, curve.to_numpy(), r.test_acc)
        rows.append(dict(strategy=r.strategy, round=r.round, n_examples=r.n_examples, test_acc=r.test_acc,
                         iid_examples=need, ratio=need / r.n_examples, flag=flag))
    return pd.DataFrame(rows, columns=["strategy", "round", "n_examples", "test_acc", "iid_examples", "ratio", "flag"])


def data_efficiency(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per curated (strategy, round >= 1): IID examples needed / curated examples, on curves averaged
    over seeds; ratio_lo / ratio_hi: 95% bootstrap over seeds (a resampled set of seeds averages
    both the curated and the IID curve, so both curves' seed noise enters; needs >= 2 seeds, else
    NaN). inf where the IID curve never reaches the curated accuracy."""
    point = _ratios(table)
    seeds = np.sort(table.seed.unique())
    point["n_seeds"] = len(seeds)
    point["ratio_lo"] = point["ratio_hi"] = np.nan
    if len(seeds) < 2 or point.empty:
        return point
    rng, by_seed = np.random.default_rng(seed), {s: table[table.seed == s] for s in seeds}
    boot, seen = [], {}
    for _ in range(n_boot):  # a resample holds repeated seeds: their runs enter the means twice
        draw = tuple(rng.choice(seeds, size=len(seeds)))
        if draw not in seen:  # 3 seeds draw only 27 sequences: each is computed once (19 s -> 0.3 s)
            pick = pd.concat([by_seed[s] for s in draw], ignore_index=True)
            seen[draw] = _ratios(pick).set_index(["strategy", "round"]).ratio
        boot.append(seen[draw])
    boot = pd.concat(boot, axis=1)
    for i, r in point.iterrows():  # inverted_cdf: no interpolation between inf values
        b = boot.loc[(r.strategy, r["round"])].to_numpy(dtype=float)
        b = b[~np.isnan(b)]  # a resample without the seeds that ran this strategy measures nothing
        if b.size:
            point.loc[i, ["ratio_lo", "ratio_hi"]] = np.quantile(b, [0.025, 0.975], method="inverted_cdf")
    return point


def paired_gaps(table: pd.DataFrame, reference: str = "premem") -> pd.DataFrame:
    """Does `reference` beat each other strategy at the same budget? Per (strategy, round >= 1) run
    by both with the same n_examples: the reference's test accuracy minus the strategy's, seed by
    seed (a seed's chains share their originals run and training seed, so much of the seed noise
    cancels, unlike in two separate ratio intervals), averaged (`gap`); gap_lo / gap_hi: the paired
    t interval (95%, n_seeds - 1 degrees of freedom; NaN with one seed): with 3 seeds a bootstrap
    over seeds would never reach past the per-seed gaps, the t interval widens as it should;
    `wins`: seeds where the reference was more accurate. Reads accuracy, not examples: no i.i.d.
    curve enters."""
    key = ["round", "seed", "n_examples"]
    ref = table[table.strategy == reference].set_index(key).test_acc
    if ref.empty:
        raise PremError(f"paired_gaps: no '{reference}' runs in the table")
    rows = []
    for (s, r), t in table[(table.strategy != reference) & (table["round"] > 0)].groupby(["strategy", "round"]):
        d = (ref - t.set_index(key).test_acc).dropna()  # seeds (and budgets) both ran
        if d.empty:
            continue
        lo, hi = mean_interval(d)  # the paired t interval; NaN with one seed
        rows.append(dict(reference=reference, strategy=s, round=r, n_examples=int(d.index.get_level_values(2)[0]),
                         gap=float(d.mean()), gap_lo=lo, gap_hi=hi,
                         wins=int((d > 0).sum()), n_seeds=len(d)))
    return pd.DataFrame(rows, columns=["reference", "strategy", "round", "n_examples", "gap", "gap_lo", "gap_hi",
                                       "wins", "n_seeds"])


def plot_scaling(table: pd.DataFrame, ax, base_acc: float | None = None):
    """Final test accuracy against training examples, one line per strategy, seeds as error bars
    (std); base_acc, the base model's own test accuracy, as a dotted line."""
    if base_acc is not None:
        ax.axhline(base_acc, color="0.5", ls=":", lw=1, label="base model, not finetuned")
    for i, (s, t) in enumerate(table.groupby("strategy", sort=False)):
        g = t.groupby("n_examples").test_acc
        m, sd = g.mean(), g.std().fillna(0)
        ax.errorbar(m.index, m.to_numpy(), yerr=sd.to_numpy(), marker="o", ms=4, capsize=3,
                    color="k" if s == "iid" else f"C{i}", ls="--" if s == "iid" else "-", label=s)
    ax.set_xlabel("training examples (originals + collected)")
    ax.set_ylabel("final test accuracy")
    ax.legend(fontsize=8, frameon=False)
    return ax
