"""Figures: predictor-vs-test-accuracy scatter and the per-example training-dynamics map.

Every function draws on a given matplotlib Axes and returns it, so notebooks compose figures and
save them with `save_figure`, which writes atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from premem import metrics
from premem.dynamics import RunDynamics
from premem.io import atomic_target

LABELS = {
    "pre_mem_acc": "pre-memorization train accuracy",
    "train_acc": "train accuracy",
    "test_acc": "test accuracy",
}


def plot_predictor(table, x: str, ax, y: str = "test_acc", fit: metrics.Fit | None = None):
    """Each run is a line through its checkpoints; the legend carries the fit's R² and slope CI."""
    import seaborn as sns

    fit = fit or metrics.fit_predictor(table[x], table[y])
    runs = list(dict.fromkeys(table["run"]))
    colors = dict(zip(runs, sns.color_palette("husl", len(runs))))
    for run, g in table.groupby("run", sort=False):
        g = g.sort_values("step")
        ax.plot(g[x], g[y], "-o", ms=3, lw=1, color=colors[run], alpha=0.8)
        ax.plot(g[x].iloc[-1:], g[y].iloc[-1:], "o", ms=6, mfc="none", color=colors[run])
    lo = float(np.nanmin([table[x].min(), table[y].min(), 0]))
    hi = float(np.nanmax([table[x].max(), table[y].max(), 1]))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    grid = np.linspace(lo, hi, 50)
    ax.plot(grid, fit.intercept + fit.slope * grid, color="0.4", lw=1.5,
            label=(f"OLS R²={fit.r2:.3f} (n={fit.n_points})\n"
                   f"slope {fit.slope:.2f} [{fit.slope_ci[0]:.2f}, {fit.slope_ci[1]:.2f}]\n"
                   f"R² vs y=x {fit.r2_identity:.3f}"))
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return ax


def predictor_panels(table, predictors: list[str], y: str = "test_acc", title: str | None = None):
    """One scatter panel per predictor, sharing the y axis: the claim and its contrast side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(predictors), figsize=(4.6 * len(predictors), 4.2), sharey=True, squeeze=False)
    for ax, x in zip(axes[0], predictors):
        plot_predictor(table, x, ax, y=y)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def example_map_rgb(run: RunDynamics, tau: float, n_examples: int | None = 200, seed: int = 0):
    """RGB image (examples, checkpoints, 3): brightness is accuracy, hue says memorized (red) or not (blue).

    Examples are a random subset (seeded) sorted by final pre-memorization accuracy, so the map reads
    from examples learned before memorisation (top) to those only memorised (bottom).
    """
    from matplotlib.colors import hsv_to_rgb

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
    ax.set_title(f"{run.run}\nbrightness: accuracy; red: memorized (loglog ppl < {tau}), blue: not", fontsize=8)
    return ax


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Write a figure atomically, so a killed run never leaves half a PNG; no timestamp, for stable diffs."""
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return Path(path)
