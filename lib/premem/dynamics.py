"""The training-dynamics record of one finetuning run, whatever wrote it.

A `RunDynamics` holds, for every saved checkpoint j and training example i, the train accuracy a_ij
and the gold-solution perplexity p_ij, plus the checkpoint's test accuracy. The authors' released
arrays (`premem.released`) and premem's own sweep tables (`premem.record`) both read into it, so the
metrics, fits and plots never care where a run came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from premem import metrics
from premem.errors import PremError


@dataclass
class RunDynamics:
    run: str
    steps: np.ndarray  # (J,) optimiser step of each checkpoint, increasing
    train_acc: np.ndarray  # (J, N) fraction of k samples correct, per training example
    perplexity: np.ndarray  # (J, N) per-token perplexity of the gold solution
    test_acc: np.ndarray  # (J,) mean test accuracy of the checkpoint's samples
    # What the run was trained on (gsm8k, math, arith, ...): runs of different datasets are never
    # fitted together (see by_dataset). None: unknown, grouped as DEFAULT_DATASET.
    dataset: str | None = None
    lr: float | None = None
    epochs: int | None = None
    data_fraction: float | None = None
    example_ids: np.ndarray | None = None  # (N,) identifiers of the training examples
    epoch_of_step: np.ndarray | None = None  # (J,) epoch at each checkpoint, when known
    extra: dict = field(default_factory=dict)  # per-checkpoint baseline predictors, (J,) arrays
    heldout_perplexity: np.ndarray | None = None  # (J, M) perplexity of training-split examples never trained on
    test_correct: np.ndarray | None = None  # (J, T) per test example, fraction of samples correct
    test_confidence: np.ndarray | None = None  # (J, T) per test example, share of samples agreeing with the majority

    def __post_init__(self):
        self.steps = np.asarray(self.steps)
        self.train_acc = np.asarray(self.train_acc, dtype=float)
        self.perplexity = np.asarray(self.perplexity, dtype=float)
        self.test_acc = np.asarray(self.test_acc, dtype=float)
        J = self.steps.shape[0]
        if self.train_acc.ndim != 2 or self.train_acc.shape[0] != J:
            raise PremError(f"run {self.run}: train_acc shape {self.train_acc.shape} is not ({J}, examples)")
        if self.perplexity.shape != self.train_acc.shape:
            raise PremError(
                f"run {self.run}: perplexity shape {self.perplexity.shape} != train_acc shape {self.train_acc.shape}"
            )
        if self.test_acc.shape != (J,):
            raise PremError(f"run {self.run}: test_acc shape {self.test_acc.shape} is not ({J},)")
        if J > 1 and np.any(np.diff(self.steps) <= 0):
            raise PremError(f"run {self.run}: checkpoint steps {self.steps.tolist()} are not increasing")

    @property
    def n_examples(self) -> int:
        return self.train_acc.shape[1]

    def pre_mem_acc(self, tau: float) -> np.ndarray:
        """Dataset pre-memorization train accuracy at each checkpoint, (J,)."""
        return metrics.dataset_mean(metrics.pre_mem_acc(self.train_acc, self.perplexity, tau))

    def mean_train_acc(self) -> np.ndarray:
        return metrics.dataset_mean(self.train_acc)

    def memorized_frac(self, tau: float) -> np.ndarray:
        measured = ~np.isnan(self.perplexity)
        mem = metrics.memorized(self.perplexity, tau) & measured
        return mem.sum(axis=1) / np.maximum(measured.sum(axis=1), 1)


DEFAULT_DATASET = "runs"


def by_dataset(runs: list[RunDynamics], names: list[str] | None = None) -> dict[str, list[RunDynamics]]:
    """Runs grouped by dataset, in order of first appearance, or only `names`, in that order: each
    group is one fit, with a threshold of its own, so no fit ever mixes datasets."""
    groups: dict[str, list[RunDynamics]] = {}
    for r in runs:
        groups.setdefault(r.dataset or DEFAULT_DATASET, []).append(r)
    if names is None:
        return groups
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise PremError(f"no runs of dataset {', '.join(map(repr, unknown))}; datasets here: {', '.join(groups)}")
    return {n: groups[n] for n in names}


def pick_run(runs: list[RunDynamics], name: str | None = None, least: bool = False) -> RunDynamics:
    """The run called `name`; by default the most memorising one (most epochs, then highest lr,
    then largest data fraction, for the most examples), or with least=True the least trained one
    (fewest epochs, lowest lr, largest data fraction). Ties go to the first run by name."""
    if name is not None:
        for r in runs:
            if r.run == name:
                return r
        raise PremError(f"no run named {name!r}; runs: {', '.join(r.run for r in runs)}")
    sign = -1 if least else 1
    ordered = sorted(runs, key=lambda r: r.run)
    return max(ordered, key=lambda r: (sign * (r.epochs or 0), sign * (r.lr or 0), r.data_fraction or 0))


def checkpoint_table(runs: list[RunDynamics], tau: float | dict[str, float]):
    """Tidy table, one row per (run, checkpoint): the predictors and the test accuracy. `tau` is one
    threshold, or one per dataset ({dataset: tau}, as by_dataset names them)."""
    rows = []
    for r in runs:
        dataset = r.dataset or DEFAULT_DATASET
        if isinstance(tau, dict) and dataset not in tau:
            raise PremError(f"run {r.run}: no tau for its dataset '{dataset}' (given for {', '.join(tau)})")
        t = float(tau[dataset]) if isinstance(tau, dict) else float(tau)
        pre, train, mem = r.pre_mem_acc(t), r.mean_train_acc(), r.memorized_frac(t)
        for j, step in enumerate(r.steps):
            row = dict(
                run=r.run, dataset=dataset, tau=t, lr=r.lr, epochs=r.epochs, data_fraction=r.data_fraction,
                step=int(step), checkpoint=j, final=j == len(r.steps) - 1, pre_mem_acc=float(pre[j]),
                train_acc=float(train[j]), test_acc=float(r.test_acc[j]), memorized_frac=float(mem[j]),
            )
            row.update({k: float(np.asarray(v)[j]) for k, v in r.extra.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def example_table(run: RunDynamics, tau: float):
    """One row per training example of a run, at its last checkpoint: pre-memorization and train
    accuracy, the gold solution's perplexity, and the epoch and step it was first memorised
    (log(log(perplexity)) < tau; NaN when never). What a user curates data from."""
    measured = ~np.isnan(run.perplexity)
    mem = metrics.memorized(run.perplexity, tau) & measured
    first = np.where(mem.any(axis=0), mem.argmax(axis=0), -1)
    epochs = run.epoch_of_step if run.epoch_of_step is not None else np.full(len(run.steps), np.nan)
    return pd.DataFrame(dict(
        run=run.run, dataset=run.dataset or DEFAULT_DATASET, example_id=run.example_ids,
        pre_mem_acc=metrics.pre_mem_acc(run.train_acc, run.perplexity, tau)[-1], train_acc=run.train_acc[-1],
        perplexity=run.perplexity[-1],
        first_memorized_epoch=np.where(first >= 0, np.asarray(epochs, dtype=float)[first], np.nan),
        first_memorized_step=np.where(first >= 0, run.steps[first].astype(float), np.nan), tau=float(tau)))


def from_tables(samples: pd.DataFrame, ppl: pd.DataFrame, runs: pd.DataFrame, stats: pd.DataFrame | None,
                dataset: str | None) -> list[RunDynamics]:
    """RunDynamics of every run in a record's tables (premem.record reads them)."""
    runs = runs.set_index("run")
    out = []
    for run, s in samples.groupby("run", sort=True):
        if run not in runs.index:
            raise PremError(f"run {run} has samples but no row in runs.parquet")
        train = s[s.split == "train"].pivot_table(index="step", columns="example_id", values="correct", aggfunc="mean")
        test_s = s[s.split == "test"]
        test_correct = test_s.pivot_table(index="step", columns="example_id", values="correct", aggfunc="mean")
        run_ppl = ppl[ppl.run == run]
        p = run_ppl[run_ppl.trained].pivot_table(index="step", columns="example_id", values="perplexity")
        p = p.reindex(index=train.index, columns=train.columns)
        held = run_ppl[~run_ppl.trained]
        held = held.pivot_table(index="step", columns="example_id", values="perplexity").reindex(train.index) \
            if len(held) else None
        epoch = s.groupby("step")["epoch"].first().reindex(train.index)
        extra = {}
        if stats is not None:
            st = stats[stats.run == run].set_index("step").reindex(train.index)
            extra = {c: st[c].to_numpy(float) for c in st.columns if c not in ("run", "epoch")}
        # Train loss: mean per-token NLL of the gold solutions, a baseline predictor.
        extra["train_loss"] = np.nanmean(np.log(p.to_numpy(float)), axis=1)
        extra["mean_perplexity"] = np.nanmean(p.to_numpy(float), axis=1)
        info = runs.loc[run]
        out.append(RunDynamics(
            run=run, dataset=dataset, steps=train.index.to_numpy(), train_acc=train.to_numpy(float),
            perplexity=p.to_numpy(float), test_acc=test_correct.mean(axis=1).reindex(train.index).to_numpy(float),
            lr=_maybe(float, info.lr), epochs=_maybe(int, info.epochs), data_fraction=_maybe(float, info.data_fraction),
            example_ids=train.columns.to_numpy(), epoch_of_step=epoch.to_numpy(), extra=extra,
            heldout_perplexity=None if held is None else held.to_numpy(float),
            test_correct=test_correct.reindex(train.index).to_numpy(float),
            test_confidence=majority_share(test_s).reindex(index=train.index, columns=test_correct.columns).to_numpy(float),
        ))
    return out


def _maybe(kind, value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else kind(value)


def majority_share(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (step, example): the share of samples giving the most common answer (unparseable counts
    as its own answer). A label-free confidence, the input of ATC."""
    answers = samples.assign(answer=samples.answer.fillna("<unparseable>"))
    counts = answers.groupby(["step", "example_id", "answer"]).size()
    top = counts.groupby(["step", "example_id"]).max()
    total = counts.groupby(["step", "example_id"]).sum()
    return (top / total).unstack("example_id")
