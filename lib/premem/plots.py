"""Figures: predictor-vs-test-accuracy scatter and the per-example training-dynamics map.

Every function draws on a given matplotlib Axes and returns it, so notebooks compose figures and
save them with `save_figure`, which writes atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.colors import hsv_to_rgb

from premem import metrics
from premem.dynamics import DEFAULT_DATASET, RunDynamics, by_dataset, pick_run
from premem.errors import PremError
from premem.io import atomic_target
from premem.predictors import PREDICTORS, is_accuracy_like


def axis_label(name: str) -> str:
    """How a figure names a column: a predictor's own label (premem.predictors.PREDICTORS), else as is."""
    return PREDICTORS[name].label if name in PREDICTORS else {"test_acc": "test accuracy"}.get(name, name)


def plot_predictor(table, x: str, ax, y: str = "test_acc", fit: metrics.Fit | None = None):
    """Each run is a line through its checkpoints; the OLS line with its 95% band, and a legend
    carrying the fit's R² and slope CI."""
    try:
        fit = fit or metrics.fit_predictor(table[x], table[y])
    except PremError:  # e.g. constant: draw the points, say there is no line
        fit = None
    runs = list(dict.fromkeys(table["run"]))
    colors = dict(zip(runs, sns.color_palette("husl", len(runs))))
    for run, g in table.groupby("run", sort=False):
        g = g.sort_values("step")
        ax.plot(g[x], g[y], "-o", ms=3, lw=1, color=colors[run], alpha=0.8)
        ax.plot(g[x].iloc[-1:], g[y].iloc[-1:], "o", ms=6, mfc="none", color=colors[run])
    if is_accuracy_like(x):
        lo = float(np.nanmin([table[x].min(), table[y].min(), 0]))
        hi = float(np.clip(1.1 * np.nanmax([table[x].max(), table[y].max()]), 0.05, 1.0))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    else:
        lo, hi = float(table[x].min()), float(table[x].max())
    grid = np.linspace(lo, hi, 50)
    if fit is None:
        ax.set_title(f"no fit: {x} does not vary", fontsize=8)
    else:
        ax.plot(grid, fit.intercept + fit.slope * grid, color="0.4", lw=1.5,
                label=(f"OLS R²={fit.r2:.3f} (n={fit.n_points})\n"
                       f"slope {fit.slope:.2f} [{fit.slope_ci[0]:.2f}, {fit.slope_ci[1]:.2f}]"
                       + (f"\nR² vs y=x {fit.r2_identity:.3f}" if is_accuracy_like(x) else "")))
        ax.fill_between(grid, *metrics.line_band(table[x], table[y], grid), color="0.4", alpha=0.15, lw=0)
    # y spans the data, not y = x: a low-accuracy dataset (MATH: test accuracy <= 0.14) fills the
    # panel instead of a corner of the unit square; room at the top for the legend.
    y_lo, y_hi = float(np.nanmin([table[y].min(), 0])), float(table[y].max())
    span = max(y_hi - y_lo, 0.05)
    ax.set_ylim(y_lo - 0.05 * span, y_hi + 0.4 * span)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85, edgecolor="none")  # readable over y = x
    return ax


def predictor_panels(table, predictors: list[str], y: str = "test_acc", title: str | None = None):
    """One scatter panel per predictor: the claim and its contrast side by side. A table of several
    datasets (its `dataset` column) gets a column of panels per dataset, a row per predictor, as
    the paper's main figure; y is shared within a dataset, never across."""
    datasets = list(dict.fromkeys(table["dataset"])) if "dataset" in table else [None]
    several = len(datasets) > 1
    rows, cols = (len(predictors), len(datasets)) if several else (1, len(predictors))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), sharey="col" if several else "row",
                             squeeze=False)
    for j, dataset in enumerate(datasets):
        part = table[table["dataset"] == dataset] if several else table
        for i, x in enumerate(predictors):
            ax = axes[i, j] if several else axes[0, i]
            plot_predictor(part, x, ax, y=y)
            if several:
                ax.set_title(f"{dataset}: {part.run.nunique()} runs, tau {part.tau.iloc[0]:g}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def example_map_rgb(run: RunDynamics, tau: float, n_examples: int | None = 200, seed: int = 0):
    """RGB image (examples, checkpoints, 3): brightness is accuracy, hue says memorized (red) or not (blue).

    Examples are a random subset (seeded) sorted by final pre-memorization accuracy, so the map reads
    from examples learned before memorisation (top) to those only memorised (bottom).
    """

    acc, ppl = run.train_acc.T, run.perplexity.T  # (N, J)
    idx = np.arange(acc.shape[0])
    if n_examples is not None and n_examples < idx.size:
        idx = np.sort(np.random.default_rng(seed).choice(idx, n_examples, replace=False))
    pre = metrics.pre_mem_acc(run.train_acc, run.perplexity, tau)[-1]
    idx = idx[np.lexsort((-np.nan_to_num(acc[idx, -1]), -np.nan_to_num(pre[idx])))]
    # Saturation grows with the distance of log(log(p)) from tau, so borderline cells look grey.
    distance = metrics.loglog_perplexity(ppl[idx]) - tau
    hue = np.where(distance < 0, 0.0, 0.6)
    sat = np.clip(np.abs(np.nan_to_num(distance, posinf=3, neginf=3)) / 1.5, 0.25, 1.0)
    val = 0.15 + 0.85 * np.nan_to_num(acc[idx])
    return hsv_to_rgb(np.stack([hue, sat, val], axis=-1)), idx


def plot_example_map(run: RunDynamics, tau: float, ax, n_examples: int | None = 200, seed: int = 0):
    rgb, _ = example_map_rgb(run, tau, n_examples, seed)
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    labels = run.epoch_of_step if run.epoch_of_step is not None else run.steps
    ax.set_xticks(range(len(run.steps)), [str(s) for s in labels], fontsize=7)
    ax.set_xlabel("epoch" if run.epoch_of_step is not None else "checkpoint step")
    ax.set_ylabel(f"training examples ({rgb.shape[0]}, by final pre-mem accuracy)")
    ax.set_yticks([])
    ax.set_title(f"{run.run}\nbrightness: accuracy; red: memorized (loglog ppl < {tau:.2f}), blue: not", fontsize=8)
    return ax


def example_maps(runs: list[RunDynamics], taus: dict[str, float], names: list[str] | None = None,
                 n_examples: int | None = 200):
    """The per-example map of each named run (default: the first run of each dataset), side by
    side, each at its dataset's threshold."""
    chosen = [pick_run(runs, n) for n in names] if names else [g[0] for g in by_dataset(runs).values()]
    fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 6), squeeze=False)
    for ax, run in zip(axes[0], chosen):
        plot_example_map(run, taus[run.dataset or DEFAULT_DATASET], ax, n_examples=n_examples)
    fig.tight_layout()
    return fig


def plot_run_curves(run: RunDynamics, tau: float, ax):
    """One run over training: train, pre-memorization and test accuracy, and the memorised share."""
    x = run.epoch_of_step if run.epoch_of_step is not None else run.steps
    ax.plot(x, run.mean_train_acc(), "-o", ms=3, label="train accuracy")
    ax.plot(x, run.pre_mem_acc(tau), "-o", ms=3, label="pre-memorization train accuracy")
    ax.plot(x, run.test_acc, "-o", ms=3, label="test accuracy")
    ax.plot(x, run.memorized_frac(tau), ":", color="red", label="share memorized")
    ax.set_xlabel("epoch" if run.epoch_of_step is not None else "step")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(run.run, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_r2_by_tau(curve, ax, marks: dict[str, float] | None = None):
    """R² of test accuracy on pre-mem accuracy against the threshold, with chosen taus marked."""
    ax.plot(curve.tau, curve.r2, "-o", ms=3, label="R² (OLS)")
    ax.plot(curve.tau, curve.r2_identity.clip(lower=-0.5), "--", lw=1, label="R² vs y = x (clipped at -0.5)")
    for (label, tau), color in zip((marks or {}).items(), ("C3", "C2", "C4")):
        ax.axvline(tau, color=color, lw=1.2, label=f"{label}: {tau:.2f}")
    ax.set_xlabel("tau (memorized when log(log(perplexity)) < tau)")
    ax.set_ylabel("R²")
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_loglog_hist(runs: list[RunDynamics], tau: float, ax):
    """log(log(perplexity)) at final checkpoints: trained examples against held-out ones."""
    trained = np.concatenate([metrics.loglog_perplexity(r.perplexity[-1]) for r in runs])
    bins = np.linspace(np.nanmin(trained[np.isfinite(trained)]), np.nanmax(trained[np.isfinite(trained)]), 40)
    ax.hist(trained[np.isfinite(trained)], bins=bins, alpha=0.6, density=True, label="trained examples")
    held = [r.heldout_perplexity[-1] for r in runs if r.heldout_perplexity is not None]
    if held:
        h = metrics.loglog_perplexity(np.concatenate(held))
        ax.hist(h[np.isfinite(h)], bins=bins, alpha=0.6, density=True, label="held-out examples")
    ax.axvline(tau, color="C3", label=f"tau {tau:.2f}")
    ax.set_xlabel("log(log(perplexity)) at each run's final checkpoint")
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_predictor_bars(comparison, ax):
    """R² and Kendall's tau of each predictor against test accuracy."""
    names = list(comparison.predictor)
    pos = np.arange(len(names))
    ax.barh(pos - 0.2, comparison.r2, height=0.4, label="R² (OLS)")
    ax.barh(pos + 0.2, comparison.kendall_tau.abs(), height=0.4, label="|Kendall tau|")
    ax.set_yticks(pos, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_subsample(sub, ax):
    ax.errorbar(sub.fraction, sub.r2_mean, yerr=[sub.r2_mean - sub.r2_lo, sub.r2_hi - sub.r2_mean], fmt="-o", ms=3)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of training examples sampled")
    ax.set_ylabel("R² (bootstrap mean, 95% interval)")
    return ax


def plot_early(early, ax):
    """Pre-mem accuracy part-way through training against the run's final test accuracy."""
    for progress, g in early.groupby("progress"):
        ax.plot(g.pre_mem_acc, g.final_test_acc, "o", ms=4, alpha=0.7, label=f"{progress:.0%} of training")
    ax.set_xlabel("pre-memorization train accuracy so far")
    ax.set_ylabel("final test accuracy")
    ax.legend(fontsize=6, frameon=False, ncol=2)
    return ax


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Write a figure atomically, so a killed run never leaves half a PNG; no timestamp, for stable diffs."""
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return Path(path)
