"""`premem fit`: test accuracy against pre-memorization accuracy over a folder of runs, per dataset.

A folder is a premem record (any writer) or the authors' released checkpoints; its runs are grouped
by dataset (dynamics.by_dataset) and each group is fitted at its own tau, resolved for every group
before any fit (`dataset_taus`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from premem import metrics, record, released
from premem.config import load_params
from premem.dynamics import by_dataset, checkpoint_table
from premem.errors import PremError


def load_runs(path: str | Path):
    """Runs from a folder of premem sweep records, or of the authors' released checkpoints."""
    path = Path(path)
    if not path.is_dir():
        raise PremError(f"runs folder not found: {path}")
    return record.read_runs(path) if record.is_record_dir(path) else released.read_runs(path)


def dataset_taus(path: str | Path, groups: dict, by_name: dict[str, float], everywhere: float | None,
                 rule: str | None = None, quantile: float | None = None) -> dict:
    """{dataset: (tau, how it was chosen)} for every group, all resolved before any fit: a
    `--tau NAME=T`, else `--tau T`, else `--tau-rule heldout` (calibrated on the held-out examples
    the record holds), else a premem record's own params (its tau or tau rule), else the authors'
    threshold for the datasets they released; any other dataset is an error."""
    unknown = set(by_name) - set(groups)
    if unknown:
        raise PremError(f"--tau for dataset {', '.join(map(repr, sorted(unknown)))}, which is not in {path}; "
                        f"datasets here: {', '.join(groups)}")
    own = record.read_config(path) if record.is_record_dir(path) else None
    if own is None and (rule == "heldout" or quantile is not None):
        raise PremError(f"{path}: the released logs hold no held-out examples to calibrate tau on; "
                        "--tau-rule heldout needs a premem record with them")
    if own is not None and (rule is not None or quantile is not None):
        effective = rule or own.tau_rule
        if quantile is not None and effective != "heldout":
            raise PremError("--tau-quantile sets the heldout rule's quantile: pass --tau-rule heldout too")
        keys = dict(tau_rule=effective) | ({} if quantile is None else dict(tau_quantile=quantile))
        own = load_params({**own.model_dump(), **keys})  # validated: a bad quantile is named
    out = {}
    for name, runs in groups.items():
        if name in by_name or everywhere is not None:
            out[name] = (by_name.get(name, everywhere), "given")
        elif own is not None:
            tau, how = metrics.chosen_tau(own, runs)
            out[name] = (tau, str(how))
        else:
            out[name] = released.tau_for(name)
    return out


def fit_summary(runs, tau: float, tau_from: str = "given") -> dict:
    """The `premem fit --json` object of one dataset: the fit over every checkpoint of every run,
    and the runs. Runs of several datasets are refused: fit each group of `dynamics.by_dataset`."""
    table = checkpoint_table(runs, tau)
    datasets = list(dict.fromkeys(table.dataset))
    if len(datasets) > 1:
        raise PremError(f"runs of {len(datasets)} datasets ({', '.join(datasets)}) in one fit: fit each on its own")
    if table.pre_mem_acc.nunique() == 1 and table.memorized_frac.min() == 1:
        raise PremError(f"{datasets[0]}: at tau {tau:g} every example is memorized at every checkpoint, so "
                        "pre-memorization accuracy is 0 throughout: tau is too high for these runs")
    pre = metrics.fit_predictor(table.pre_mem_acc, table.test_acc)
    train = metrics.fit_predictor(table.train_acc, table.test_acc)
    out = dict(
        dataset=datasets[0], tau=tau, tau_from=tau_from, n_runs=len(runs),
        r2=pre.r2, r2_identity=pre.r2_identity, slope=pre.slope, intercept=pre.intercept,
        slope_ci=list(pre.slope_ci), intercept_ci=list(pre.intercept_ci), n_points=pre.n_points,
        train_acc_r2=train.r2, runs=[],
    )
    for run, g in table.groupby("run", sort=False):
        first = g.iloc[0]
        out["runs"].append(dict(
            # None, not NaN, where a run's name did not say: NaN is not JSON.
            run=run, lr=None if pd.isna(first.lr) else float(first.lr),
            epochs=None if pd.isna(first.epochs) else int(first.epochs),
            data_fraction=None if pd.isna(first.data_fraction) else float(first.data_fraction),
            checkpoints=g[["step", "pre_mem_acc", "train_acc", "test_acc", "memorized_frac"]].to_dict("records"),
        ))
    return out


def fit_datasets(path: str | Path, taus: dict[str, float] | None = None, tau: float | None = None,
                 datasets: list[str] | None = None, rule: str | None = None,
                 quantile: float | None = None) -> list[dict]:
    """`premem fit`: one summary per dataset in the folder (or only `datasets`), each at its own tau."""
    groups = by_dataset(load_runs(path), datasets)
    chosen = dataset_taus(path, groups, taus or {}, tau, rule, quantile)
    return [fit_summary(runs, *chosen[name]) for name, runs in groups.items()]


def print_fit(summary: dict) -> None:
    s = summary
    print(f"== {s['dataset']}: {s['n_runs']} runs, {s['n_points']} checkpoints; tau {s['tau']:g} ({s['tau_from']})")
    print(f"{'run':<48} {'step':>6} {'pre_mem':>8} {'train':>7} {'test':>7} {'memorized':>9}")
    for r in summary["runs"]:
        for c in r["checkpoints"]:
            print(f"{r['run']:<48} {c['step']:>6} {c['pre_mem_acc']:>8.3f} {c['train_acc']:>7.3f} "
                  f"{c['test_acc']:>7.3f} {c['memorized_frac']:>9.3f}")
    print(f"\n{s['dataset']}, tau {s['tau']:g}: test ~ pre-mem accuracy over {s['n_points']} checkpoints: "
          f"R² {s['r2']:.3f}, slope {s['slope']:.3f} [{s['slope_ci'][0]:.3f}, {s['slope_ci'][1]:.3f}], "
          f"intercept {s['intercept']:.3f}, R² vs y=x {s['r2_identity']:.3f}")
    print(f"{s['dataset']}: test ~ train accuracy: R² {s['train_acc_r2']:.3f}")
