"""Claim 3: per example, low pre-memorization accuracy flags answers that break under perturbation.

For the final checkpoint of one finished sweep run, every training query is perturbed and k answers
are sampled and graded; an example's *robustness* is its accuracy under that perturbation. A
perturbation is one `Perturbation` entry in `PERTURBATIONS`:
- "first", "we_know_that" (tasks.PREFIX_PERTURBATIONS): the prompt forces the first words of the
  answer; the completion is graded as forced words + completion, since the answer starts with them.
- "problem" (tasks.perturb_problem): same template, new numbers and names, gold answer recomputed;
  for tasks with variants only.

Pre-memorization and train accuracy come from the samples the sweep recorded, never resampled.
The sampling is a stage of its own (premem.perturb), cached under <record>/robustness/, keyed by
run, perturbation and a hash of (k, seed, tau); this module reads those tables and bins and ranks them.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import rankdata
from statsmodels.stats.proportion import proportion_confint

from premem import metrics, record, tasks
from premem.config import shown
from premem.dynamics import RunDynamics, pick_run
from premem.errors import Missing, PremError
from premem.plots import axis_label

COLUMNS = ["run", "example_id", "perturbation", "robustness", "pre_mem_acc", "train_acc", "k"]


@dataclass(frozen=True)
class Perturbation:
    """How a training query is perturbed: `queries(examples, template, seed)` gives (prompts,
    forced answer prefixes, gold answers), one per example. `needs_variants`: it asks the task for
    new problems of an example's template (tasks.has_variants), so tasks without them skip it."""
    queries: Callable
    needs_variants: bool = False


def _forced(phrase: str) -> Callable:
    """The answer forced to start with `phrase`; graded as phrase + completion."""
    def queries(examples, template: str, seed: int):
        prompts = [tasks.perturb_prompt(tasks.format_prompt(ex, template), phrase) for ex in examples]
        return prompts, [phrase] * len(examples), [ex.answer for ex in examples]
    return queries


def _new_problem(examples, template: str, seed: int):
    new = [tasks.perturb_problem(ex, seed) for ex in examples]
    return [tasks.format_prompt(ex, template) for ex in new], [""] * len(new), [ex.answer for ex in new]


PERTURBATIONS = {
    **{key: Perturbation(_forced(phrase)) for key, phrase in tasks.PREFIX_PERTURBATIONS.items()},
    "problem": Perturbation(_new_problem, needs_variants=True),
}


def check(perturbations) -> None:
    """Every name a perturbation of the registry: one line naming the key otherwise."""
    unknown = [p for p in perturbations if p not in PERTURBATIONS]
    if unknown:
        raise PremError(f"key 'perturbations': unknown '{unknown[0]}'; known: {list(PERTURBATIONS)}")


def kinds(cfg) -> list[str]:
    """The params' perturbations that apply to their task (those needing variants only where it has them)."""
    check(cfg.perturbations)
    return [p for p in cfg.perturbations if not PERTURBATIONS[p].needs_variants or tasks.has_variants(cfg.task)]


def default_run(record_dir: str | Path) -> str:
    """The most memorising run (`dynamics.pick_run`: most epochs, then highest lr, then largest data fraction)."""
    return pick_run(record.read_runs(record_dir)).run


def samples_per_query(cfg, k: int | None = None) -> int:
    """Answers sampled per perturbed query: `k`, else the record's robustness_k, else its k."""
    return k or cfg.robustness_k or cfg.k


def cache_path(record_dir: str | Path, run: str, perturbation: str, k: int, seed: int, tau: float) -> Path:
    key = hashlib.sha256(json.dumps(dict(k=k, seed=seed, tau=tau), sort_keys=True).encode()).hexdigest()[:12]
    return Path(record_dir) / "robustness" / f"{run}-{perturbation}-{key}.parquet"


def perturbed_queries(examples, perturbation: str, template: str, seed: int):
    """(prompts, forced answer prefixes, gold answers), one per example."""
    if perturbation not in PERTURBATIONS:
        raise PremError(f"perturbation: unknown '{perturbation}'; known: {list(PERTURBATIONS)}")
    return PERTURBATIONS[perturbation].queries(examples, template, seed)


def recorded_accuracy(dyn: RunDynamics, tau: float) -> pd.DataFrame:
    """Final-checkpoint pre-memorization and train accuracy per example, from the recorded samples."""
    pre = metrics.pre_mem_acc(dyn.train_acc, dyn.perplexity, tau)[-1]
    return pd.DataFrame(dict(example_id=dyn.example_ids, pre_mem_acc=pre, train_acc=dyn.train_acc[-1],
                             step=int(dyn.steps[-1])))


def resolved(record_dir: str | Path, run: str | None, k: int | None, tau: float | None):
    """(the record's params, the run's dynamics, samples per query, tau) for a robustness table:
    `run` None is `default_run`, `k` the record's robustness_k, else its k, `tau` its chosen tau."""
    cfg = record.read_config(record_dir)
    runs = record.read_runs(record_dir)
    dyn = pick_run(runs, run)
    return cfg, dyn, samples_per_query(cfg, k), metrics.chosen_tau(cfg, runs)[0] if tau is None else tau


def read_tables(record_dir: str | Path, run: str | None, perturbations, *, k: int | None = None, seed: int = 0,
                tau: float | None = None) -> pd.DataFrame:
    """The cached robustness tables of `run` under each perturbation, concatenated in their order;
    one not sampled yet raises premem.errors.Missing naming the command that samples it."""
    check(perturbations)
    cfg, dyn, k, tau = resolved(record_dir, run, k, tau)
    paths = {p: cache_path(record_dir, dyn.run, p, k, seed, tau) for p in perturbations}
    lacking = [p for p, f in paths.items() if not f.exists()]
    if lacking:
        raise Missing(f"robustness of run {dyn.run} under {', '.join(lacking)} not sampled yet in "
                      f"{shown(record_dir)}: "
                      f"run `premem perturb --params <{cfg.name}'s params file>` (or notebook 06, premem reproduce)")
    tables = [pd.read_parquet(f) for f in paths.values()]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)


def bin_width(values, target: float = 0.2) -> float:
    """A bin width on the accuracies' own grid: accuracies of k samples are multiples of 1/k, so a
    bin is the smallest multiple of 1/k at least `target` wide (k = 4: 0.25, k = 5 as in the paper:
    0.2, k = 10: 0.2); `target` when the values are on no grid of k <= 20."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    for k in range(1, 21):
        if np.allclose(v * k, np.round(v * k), atol=1e-6):
            return float(np.ceil(target * k - 1e-9) / k)
    return target


def bin_of(values, width: float = 0.2) -> np.ndarray:
    """Nearest multiple of `width`: 0 and 1 are bins of their own, as in the paper's figure."""
    return np.round(np.floor(np.asarray(values, dtype=float) / width + 0.5 + 1e-9) * width, 6)


def binned(table: pd.DataFrame, by: str = "pre_mem_acc", width: float | None = None) -> pd.DataFrame:
    """Mean robustness per bin of `by` (width: `bin_width` of its values), with a Wilson 95% interval
    over all k samples in the bin."""
    width = bin_width(table[by]) if width is None else width
    t = table.dropna(subset=[by, "robustness"]).assign(bin=lambda d: bin_of(d[by], width))
    t = t.assign(correct=np.round(t.robustness * t.k), samples=t.k)
    out = t.groupby("bin").agg(n_examples=("robustness", "size"), mean=("robustness", "mean"),
                               correct=("correct", "sum"), samples=("samples", "sum")).reset_index()
    lo, hi = proportion_confint(out.correct, out.samples, alpha=0.05, method="wilson")
    # Wilson's bound at a proportion of 0 or 1 is that proportion up to float rounding (12 of 12
    # gives 0.9999999999999999), which left the bin's mean outside its own interval.
    share = out.correct / out.samples
    return out.assign(ci_low=np.minimum(np.asarray(lo), share), ci_high=np.maximum(np.asarray(hi), share))


@dataclass(frozen=True)
class Correlation:
    rho: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def _rank_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho along the last axis; NaN where either side is constant."""
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1), np.nan)


def spearman(table: pd.DataFrame, by: str = "pre_mem_acc", n_boot: int = 2000, seed: int = 0) -> Correlation:
    """Spearman rho of robustness on `by`, with a seeded percentile-bootstrap 95% interval over examples.
    Degenerate tables (a constant column) give NaN rather than a warning."""
    t = table.dropna(subset=[by, "robustness"])
    x, y = t[by].to_numpy(float), t.robustness.to_numpy(float)
    rho = float(_rank_corr(x, y))
    if len(t) < 3:
        return Correlation(rho, np.nan, np.nan, len(t))
    idx = np.random.default_rng(seed).integers(0, len(t), size=(n_boot, len(t)))
    boot = _rank_corr(x[idx], y[idx])
    lo, hi = np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return Correlation(rho, float(lo), float(hi), len(t))


def plot_robustness(table: pd.DataFrame, by: str, ax, width: float | None = None):
    """Violins of per-example robustness per bin of `by`, with bin means and Wilson intervals."""
    width = bin_width(table[by]) if width is None else width
    t = table.assign(bin=bin_of(table[by], width)).dropna(subset=["bin", "robustness"])
    stats = binned(table, by, width)
    # Every bin from 0 to 1 gets a slot, empty or not, so panels line up with each other.
    bins = np.union1d(bin_of(np.arange(0, 1 + width / 2, width), width), stats.bin)
    label = {b: f"{b:g}" for b in bins}
    sns.violinplot(x=t.bin.map(label), y=t.robustness, order=list(label.values()), cut=0, inner=None,
                   density_norm="width", color="0.85", linewidth=0.5, ax=ax)
    pos = np.searchsorted(bins, stats.bin)
    ax.errorbar(pos, stats["mean"], yerr=[stats["mean"] - stats.ci_low, stats.ci_high - stats["mean"]],
                fmt="-o", color="C3", ms=4, capsize=3, label="bin mean (Wilson 95%)")
    for p, n in zip(pos, stats.n_examples):
        ax.annotate(f"n={n}", (p, 1.03), ha="center", fontsize=7)
    ax.set_xlim(-0.5, len(bins) - 0.5)  # the error bars' autoscaling would otherwise hide empty bins
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel(f"final {axis_label(by)} (bin)")
    ax.set_ylabel("robustness (accuracy when perturbed)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return ax
