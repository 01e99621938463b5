"""Pre-memorization train accuracy and the fits that relate it to test accuracy.

Notation follows the paper: for checkpoint j and training example i, `a_ij` is the train accuracy
(fraction of k sampled completions that are right) and `p_ij` the per-token perplexity of the gold
solution. Arrays are shaped (checkpoint, example), checkpoints in training order.

NaN means "not measured": an unmeasured accuracy or perplexity at an earlier checkpoint adds nothing
to the running maximum; an unmeasured accuracy at checkpoint J makes the example's value at J NaN;
dataset means skip NaN examples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm  # heavy import, kept off the package's import path
from scipy.stats import t

from premem.errors import PremError


def loglog_perplexity(perplexity) -> np.ndarray:
    """log(log(p)); p <= 1 (a perfect copy, or rounding just below 1) maps to -inf, NaN stays NaN."""
    p = np.asarray(perplexity, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.log(p))
    return np.where(p <= 1.0, -np.inf, out)


def memorized(perplexity, tau: float) -> np.ndarray:
    """Memorization mask: log(log(p_ij)) < tau. NaN perplexity gives False (unknown, see module doc)."""
    return loglog_perplexity(perplexity) < tau


def pre_mem_acc(train_acc, perplexity, tau: float) -> np.ndarray:
    """Per-example pre-memorization train accuracy at every checkpoint J, shape (J, N).

    min(max_{j<=J} a_ij * [not memorized at j], a_iJ): the best accuracy an example reached before the
    model memorised it, capped by its current accuracy. 0 when memorised at every checkpoint so far.
    """
    a = np.asarray(train_acc, dtype=float)
    p = np.asarray(perplexity, dtype=float)
    if a.shape != p.shape or a.ndim != 2:
        raise PremError(f"train_acc {a.shape} and perplexity {p.shape} must both be (checkpoint, example)")
    contribution = np.where(memorized(p, tau), 0.0, a)
    contribution[np.isnan(p)] = np.nan
    # fmax skips NaN, so an unmeasured checkpoint neither raises nor erases the running maximum.
    running_max = np.fmax.accumulate(contribution, axis=0)
    return np.minimum(running_max, a)


def dataset_mean(per_example) -> np.ndarray:
    """Mean over examples (last axis), skipping NaN; NaN where nothing was measured."""
    x = np.asarray(per_example, dtype=float)
    n = np.sum(~np.isnan(x), axis=-1)
    total = np.nansum(x, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def mean_interval(values, population: int | None = None, level: float = 0.95) -> tuple[float, float]:
    """The `level` t interval of the mean of `values` (NaN skipped) as an estimate of the mean over a
    population of `population` items they were drawn from without replacement (finite population
    correction; None: an unlimited population). A census (all items) has no width."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return (np.nan, np.nan)
    correction = 1.0 if population is None else max(population - x.size, 0) / max(population - 1, 1)
    half = t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size) * np.sqrt(correction)
    return float(x.mean() - half), float(x.mean() + half)


@dataclass(frozen=True)
class Fit:
    """Ordinary least squares of y (test accuracy) on x (a predictor), with 95% intervals."""

    r2: float
    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    r2_identity: float  # R² of the line y = x: how well x predicts y without any fitted line
    n_points: int

    def as_dict(self) -> dict:
        return asdict(self)


def fit_or_none(x, y) -> Fit | None:
    """The fit, or None where the predictor is constant (it explains nothing: callers report R² 0)."""
    try:
        return fit_predictor(x, y)
    except PremError:
        x = np.asarray(x, dtype=float)
        if np.sum(~np.isnan(x)) >= 3 and np.nanmax(x) == np.nanmin(x):
            return None
        raise


def r2_identity(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(1.0 - np.sum((y - x) ** 2) / np.sum((y - y.mean()) ** 2))


def _ols(x, y):
    """statsmodels' OLS of y on x over the points with both measured, or PremError."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise PremError(f"predictor has {x.size} points but test accuracy has {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 3:
        raise PremError(f"a fit needs at least 3 points with both values measured, got {x.size}")
    if np.ptp(x) == 0:
        raise PremError("predictor is constant over all points: no line can be fitted")
    with np.errstate(divide="ignore", invalid="ignore"):
        return sm.OLS(y, sm.add_constant(x)).fit(), x, y


def fit_predictor(x, y, alpha: float = 0.05) -> Fit:
    """Fit y = slope * x + intercept by OLS (statsmodels); points with NaN in x or y are dropped."""
    result, x, y = _ols(x, y)
    # Constant test accuracy (a few small runs that all score the same) leaves R² undefined: NaN,
    # and no numpy divide warnings, which would also land in the notebooks' checked outputs.
    undefined = np.ptp(y) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ci = result.conf_int(alpha)
    return Fit(
        r2=np.nan if undefined else float(result.rsquared),
        slope=float(result.params[1]),
        intercept=float(result.params[0]),
        slope_ci=(float(ci[1, 0]), float(ci[1, 1])),
        intercept_ci=(float(ci[0, 0]), float(ci[0, 1])),
        r2_identity=np.nan if undefined else r2_identity(x, y),
        n_points=int(x.size),
    )


def line_band(x, y, grid, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - alpha) confidence band of the fitted OLS line (the mean of y given x) at `grid`."""
    result, _, _ = _ols(x, y)
    grid = np.asarray(grid, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        band = result.get_prediction(np.column_stack([np.ones_like(grid), grid])).conf_int(alpha=alpha)
    return band[:, 0], band[:, 1]


def calibrate_tau(heldout_perplexities, quantile: float = 0.05) -> float:
    """Memorization threshold from held-out training examples, using no test labels.

    Held-out examples come from the training distribution but were never trained on, so their
    log(log(perplexity)) shows what generalisation alone achieves. tau is its `quantile` pooled over
    every checkpoint given: an example scoring below it is better fitted than almost any unseen one.
    """
    values = np.concatenate([loglog_perplexity(p).ravel() for p in heldout_perplexities] or [np.array([])])
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise PremError("no held-out perplexities to calibrate tau on: record held-out examples (n_heldout > 0 "
                        "for a sweep, --heldout for premem record, heldout= for PreMemCallback) or fix tau")
    return float(np.quantile(values, quantile))


@dataclass(frozen=True)
class Threshold:
    """How tau was chosen, as data (the ledger and the tables read the fields; people read `str`)."""
    value: float
    rule: str  # "fixed" (given in the params) or "heldout" (a quantile of held-out examples)
    quantile: float | None = None
    n_values: int = 0  # held-out log(log(perplexity)) values the quantile was taken over

    def __str__(self) -> str:
        if self.rule == "fixed":
            return f"tau = {self.value:g}, fixed in the params"
        return (f"tau = {self.value:.3f}, the {self.quantile:g} quantile of log(log(perplexity)) of held-out "
                f"training examples over every checkpoint ({self.n_values} values); no test labels used")

    @property
    def short(self) -> str:
        return (f"tau {self.value:.2f}, fixed" if self.rule == "fixed"
                else f"tau {self.value:.2f}, held-out {self.quantile:g} quantile")

    def columns(self) -> dict:
        """Columns for a result table: tau, tau_rule, tau_quantile."""
        return dict(tau=self.value, tau_rule=self.rule, tau_quantile=self.quantile)


def chosen_tau(cfg, runs) -> tuple[float, Threshold]:
    """The threshold a config asks for, and how it was chosen (a `Threshold`; its str is a sentence)."""
    if cfg.tau_rule == "fixed":
        return cfg.tau, Threshold(cfg.tau, "fixed")
    held = [r.heldout_perplexity for r in runs if r.heldout_perplexity is not None]
    tau = calibrate_tau(held, cfg.tau_quantile)
    return tau, Threshold(tau, "heldout", cfg.tau_quantile, int(sum(h.size for h in held)))


def r2_by_tau(runs, taus) -> "pd.DataFrame":
    """R² of test accuracy on dataset pre-memorization accuracy at each tau (the threshold sweep)."""
    test = np.concatenate([r.test_acc for r in runs])
    rows = []
    for tau in taus:
        fit = fit_or_none(np.concatenate([r.pre_mem_acc(tau) for r in runs]), test)
        rows.append(dict(tau=float(tau), r2=fit.r2 if fit else 0.0, r2_identity=fit.r2_identity if fit else np.nan,
                         slope=fit.slope if fit else np.nan))
    return pd.DataFrame(rows)
