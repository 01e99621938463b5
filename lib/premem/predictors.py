"""Predictors of test accuracy that a training run can compute without test labels, compared.

The paper's claim 2: across runs, pre-memorization train accuracy predicts test accuracy better
than train accuracy, train loss, the perplexity of the gold solutions, distance from
initialisation, gradient variance and ATC (average thresholded confidence, Garg et al. 2022).
Each predictor is one value per checkpoint; `compare` scores each against test accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from premem import metrics
from premem.dynamics import RunDynamics, checkpoint_table
from premem.errors import PremError


@dataclass(frozen=True)
class Predictor:
    label: str  # how figures and tables name it
    accuracy_like: bool = False  # on test accuracy's scale: the R² of y = x means something


# Each predictor once: a checkpoint_table column of that name (dynamics: from the record's tables;
# param_distance and grad_variance recorded by recorder.Recorder, ATC by predictor_table).
PREDICTORS: dict[str, Predictor] = {
    "pre_mem_acc": Predictor("pre-memorization train accuracy", accuracy_like=True),
    "train_acc": Predictor("train accuracy", accuracy_like=True),
    "train_loss": Predictor("train loss (mean per-token NLL of gold solutions)"),
    "mean_perplexity": Predictor("mean gold-solution perplexity"),
    "param_distance": Predictor("distance from initialisation ||θ-θ0||²"),
    "grad_variance": Predictor("gradient variance"),
    "atc": Predictor("ATC estimate", accuracy_like=True),
}


def atc_threshold(confidence, accuracy: float) -> tuple[float, float]:
    """ATC's threshold on a source set: t and a tie weight w so that
    mean(conf > t) + w * mean(conf == t) equals the source accuracy (confidences are coarse: with k
    samples, majority shares take few values, so ties are split rather than ignored)."""
    c = np.sort(np.asarray(confidence, dtype=float).ravel())[::-1]
    c = c[~np.isnan(c)]
    if c.size == 0:
        raise PremError("ATC: no confidences on the source run")
    n_above = accuracy * c.size
    t = c[min(int(np.floor(n_above)), c.size - 1)]
    above, tied = np.mean(c > t), np.mean(c == t)
    return float(t), float(np.clip((accuracy - above) / tied, 0, 1)) if tied else 0.0


def atc_predict(confidence, t: float, w: float) -> float:
    c = np.asarray(confidence, dtype=float)
    c = c[~np.isnan(c)]
    return float(np.mean(c > t) + w * np.mean(c == t))


def predictor_table(runs: list[RunDynamics], tau: float, atc_source: str | None = None) -> pd.DataFrame:
    """One row per checkpoint with every predictor available and the test accuracy.

    ATC is calibrated on the final checkpoint of `atc_source` (default: the first run), the one
    place it sees test labels, as in the paper's comparison; that run's own points are kept.
    """
    table = checkpoint_table(runs, tau)
    if all(r.test_confidence is not None for r in runs):
        source = next((r for r in runs if r.run == atc_source), None) if atc_source else runs[0]
        if source is None:
            raise PremError(f"ATC source run {atc_source!r} is not among the runs")
        t, w = atc_threshold(source.test_confidence[-1], source.test_acc[-1])
        table["atc"] = np.concatenate([[atc_predict(c, t, w) for c in r.test_confidence] for r in runs])
    return table


def compare(table: pd.DataFrame, predictors=PREDICTORS, y: str = "test_acc") -> pd.DataFrame:
    """R² (OLS), R² of y = x for accuracy-like predictors, and Kendall's tau of each predictor; one
    block per dataset (the table's `dataset` column, as checkpoint_table writes it), never a fit
    over a mixture. Within a block, best R² first."""
    if "dataset" not in table:
        return _compare(table, predictors, y)
    blocks = []
    for dataset, g in table.groupby("dataset", sort=False):
        block = _compare(g, predictors, y)
        block.insert(0, "dataset", dataset)
        if "tau" in g:
            block["tau"] = g.tau.iloc[0]
        blocks.append(block)
    return pd.concat(blocks, ignore_index=True)


def _compare(table: pd.DataFrame, predictors, y: str) -> pd.DataFrame:
    rows = []
    for name in predictors:
        if name not in table or table[name].isna().all():
            continue
        keep = table[[name, y]].dropna()
        fit = metrics.fit_or_none(keep[name], keep[y])
        if fit is None:  # constant over every checkpoint: it predicts nothing
            rows.append(dict(predictor=name, r2=0.0, kendall_tau=np.nan, slope=np.nan, r2_identity=np.nan,
                             n_points=len(keep)))
            continue
        kt = kendalltau(keep[name], keep[y])
        rows.append(dict(predictor=name, r2=fit.r2, kendall_tau=float(kt.statistic), slope=fit.slope,
                         r2_identity=fit.r2_identity if is_accuracy_like(name) else np.nan,
                         n_points=fit.n_points))
    return pd.DataFrame(rows).sort_values("r2", ascending=False).reset_index(drop=True)


def is_accuracy_like(name: str) -> bool:
    return name in PREDICTORS and PREDICTORS[name].accuracy_like


def subsample_r2(runs: list[RunDynamics], tau: float, fractions, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """R² when pre-mem accuracy is estimated from a random fraction of the training examples.

    Sampling k answers for every training example at every checkpoint is the metric's main cost;
    this shows how much of it a researcher can skip. Bootstrap over random example subsets.
    """
    rng = np.random.default_rng(seed)
    test = np.concatenate([r.test_acc for r in runs])
    per_example = [metrics.pre_mem_acc(r.train_acc, r.perplexity, tau) for r in runs]
    rows = []
    for frac in fractions:
        r2s = []
        for _ in range(n_boot if frac < 1 else 1):
            x = []
            for pe in per_example:
                m = max(1, int(round(frac * pe.shape[1])))
                cols = rng.choice(pe.shape[1], m, replace=False)
                x.append(metrics.dataset_mean(pe[:, cols]))
            fit = metrics.fit_or_none(np.concatenate(x), test)
            r2s.append(fit.r2 if fit else 0.0)
        r2s = np.asarray(r2s)
        rows.append(dict(fraction=float(frac), r2_mean=float(r2s.mean()), r2_lo=float(np.quantile(r2s, 0.025)),
                         r2_hi=float(np.quantile(r2s, 0.975)), sampling_saved=1 - float(frac)))
    return pd.DataFrame(rows)


def early_prediction(runs: list[RunDynamics], tau: float) -> pd.DataFrame:
    """Pre-mem accuracy at each run's early checkpoints against the run's FINAL test accuracy: can a
    run be judged before it ends? One row per (run, fraction of training done)."""
    rows = []
    for r in runs:
        pre = r.pre_mem_acc(tau)
        for j, step in enumerate(r.steps):
            rows.append(dict(run=r.run, progress=float(step / r.steps[-1]), pre_mem_acc=float(pre[j]),
                             train_acc=float(r.mean_train_acc()[j]), final_test_acc=float(r.test_acc[-1])))
    return pd.DataFrame(rows)
