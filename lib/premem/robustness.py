"""Claim 3: per example, low pre-memorization accuracy flags answers that break under perturbation.

For the final checkpoint of one finished sweep run, every training query is perturbed and k answers
are sampled and graded; an example's *robustness* is its accuracy under that perturbation. Two kinds:
- "first", "we_know_that" (tasks.PREFIX_PERTURBATIONS): the prompt forces the first words of the
  answer; the completion is graded as forced words + completion, since the answer starts with them.
- "problem" (tasks.perturb_problem): same template, new numbers and names, gold answer recomputed.

Pre-memorization and train accuracy come from the samples the sweep recorded, never resampled.
Tables are cached under <record>/robustness/, keyed by run, perturbation and a hash of (k, seed, tau);
`robustness_tables` samples the perturbations in parallel worker processes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from premem import checkpoints, grading, io, launcher, metrics, record, recorder, tasks
from premem import data as data_lib
from premem.dynamics import RunDynamics, pick_run
from premem.errors import Missing, PremError

PERTURBATIONS = (*tasks.PREFIX_PERTURBATIONS, "problem")
COLUMNS = ["run", "example_id", "perturbation", "robustness", "pre_mem_acc", "train_acc", "k"]


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
    if perturbation in tasks.PREFIX_PERTURBATIONS:
        forced = tasks.PREFIX_PERTURBATIONS[perturbation]
        prompts = [tasks.perturb_prompt(tasks.format_prompt(ex, template), perturbation) for ex in examples]
        return prompts, [forced] * len(examples), [ex.answer for ex in examples]
    if perturbation == "problem":
        new = [tasks.perturb_problem(ex, seed) for ex in examples]
        return [tasks.format_prompt(ex, template) for ex in new], [""] * len(new), [ex.answer for ex in new]
    raise PremError(f"perturbation: unknown '{perturbation}'; known: {list(PERTURBATIONS)}")


def recorded_accuracy(dyn: RunDynamics, tau: float) -> pd.DataFrame:
    """Final-checkpoint pre-memorization and train accuracy per example, from the recorded samples."""
    pre = metrics.pre_mem_acc(dyn.train_acc, dyn.perplexity, tau)[-1]
    return pd.DataFrame(dict(example_id=dyn.example_ids, pre_mem_acc=pre, train_acc=dyn.train_acc[-1],
                             step=int(dyn.steps[-1])))


def robustness_table(record_dir: str | Path, run: str | None, *, perturbation: str, k: int | None = None,
                     seed: int = 0, tau: float | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per training example of `run` (None: `default_run`): robustness under `perturbation`
    at the final checkpoint, beside final pre-memorization and train accuracy. `k` defaults to the
    record's robustness_k, else its k; `tau` to the record's `metrics.chosen_tau`. Cached: a rerun
    with the same (k, seed, tau) reads the table back without sampling."""
    from premem import training

    record_dir = Path(record_dir)
    cfg = record.read_config(record_dir)
    runs = record.read_runs(record_dir)
    dyn = pick_run(runs, run)
    k = samples_per_query(cfg, k)
    tau = metrics.chosen_tau(cfg, runs)[0] if tau is None else tau
    if perturbation not in PERTURBATIONS:
        raise PremError(f"perturbation: unknown '{perturbation}'; known: {list(PERTURBATIONS)}")
    run = dyn.run
    cached = cache_path(record_dir, run, perturbation, k, seed, tau)
    if cached.exists():
        return pd.read_parquet(cached)
    examples, _ = data_lib.run_examples(record_dir, run, cfg)
    acc = recorded_accuracy(dyn, tau).set_index("example_id")
    ckpt = record.final_checkpoint(record_dir, run)
    step = json.loads((ckpt / checkpoints.MARKER).read_text())["step"]
    if step != acc.step.iloc[0]:  # weights and record must be the same checkpoint
        raise PremError(f"run {run}: final checkpoint is step {step} but the record ends at step {acc.step.iloc[0]}")
    prompts, forced, golds = perturbed_queries(examples, perturbation, cfg.prompt_template, seed)
    lm, tok = training.load_checkpoint(ckpt)
    completions = recorder.sample_answers(cfg, lm, ckpt, tok, prompts, k, seed, progress)
    rows = []
    for ex, outs, pre, gold in zip(examples, completions, forced, golds):
        grades = grading.grade_many([pre + c for c in outs], gold, tasks.answer_checker(cfg))
        rows.append(dict(run=run, example_id=ex.id, perturbation=perturbation,
                         robustness=float(np.mean([g.correct for g in grades])),
                         pre_mem_acc=float(acc.pre_mem_acc[ex.id]), train_acc=float(acc.train_acc[ex.id]), k=k))
    table = pd.DataFrame(rows, columns=COLUMNS)
    io.write_parquet(cached, table)
    return table


def _table_job(record_dir: str, run: str, perturbation: str, k, seed: int, tau: float) -> pd.DataFrame:
    return robustness_table(record_dir, run, perturbation=perturbation, k=k, seed=seed, tau=tau, progress=False)


def robustness_tables(record_dir: str | Path, run: str | None, perturbations, *, k: int | None = None,
                      seed: int = 0, tau: float | None = None, workers: int = 1,
                      cached_only: bool = False) -> pd.DataFrame:
    """`robustness_table` for each perturbation, concatenated in their order; uncached ones sample
    in `workers` one-thread processes (launcher.map_one_thread), which does not change the tables.
    `cached_only`: sample nothing; a perturbation not cached yet raises premem.errors.Missing."""
    record_dir = Path(record_dir)
    runs = record.read_runs(record_dir)
    run = pick_run(runs, run).run  # resolved once, so every worker samples the same run at the same tau
    cfg = record.read_config(record_dir)
    tau = metrics.chosen_tau(cfg, runs)[0] if tau is None else tau
    if cached_only:
        lacking = [p for p in perturbations if not cache_path(record_dir, run, p, samples_per_query(cfg, k),
                                                              seed, tau).exists()]
        if lacking:
            raise Missing(f"robustness of run {run} under {', '.join(lacking)} not sampled yet in {record_dir}: "
                          "run notebook 06 (or premem reproduce)")
    tables = launcher.map_one_thread(_table_job, [(str(record_dir), run, p, k, seed, tau) for p in perturbations],
                                  workers)
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
    from statsmodels.stats.proportion import proportion_confint

    width = bin_width(table[by]) if width is None else width
    t = table.dropna(subset=[by, "robustness"]).assign(bin=lambda d: bin_of(d[by], width))
    t = t.assign(correct=np.round(t.robustness * t.k), samples=t.k)
    out = t.groupby("bin").agg(n_examples=("robustness", "size"), mean=("robustness", "mean"),
                               correct=("correct", "sum"), samples=("samples", "sum")).reset_index()
    lo, hi = proportion_confint(out.correct, out.samples, alpha=0.05, method="wilson")
    return out.assign(ci_low=np.asarray(lo), ci_high=np.asarray(hi))


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
    from scipy.stats import rankdata

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
    import seaborn as sns

    from premem.plots import axis_label

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
