"""The dynamics record premem writes: one folder per sweep, tidy parquet tables, and their config.

    <record>/config.json               resolved params, their hash, library versions
    <record>/samples.parquet           run, step, epoch, split, example_id, sample_idx, correct,
                                       correct_strict, parse_ok, answer
    <record>/perplexity.parquet        run, step, epoch, example_id, trained, nll, n_tokens, perplexity
                                       (trained False: held-out training examples, for tau calibration)
    <record>/checkpoints.parquet       run, step, epoch, and per-checkpoint predictors
                                       (param_distance, grad_variance)
    <record>/runs.parquet              run, lr, epochs, data_fraction, seed, n_train
    <record>/runs/<run>/...            per-run work: trainer checkpoints and per-checkpoint parts

The top-level tables are concatenations of per-checkpoint parts, each written atomically when that
checkpoint is recorded, so a killed sweep loses at most the checkpoint in progress. Any trainer that
writes these tables can be read by `premem fit`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from premem.config import Params
from premem.dynamics import RunDynamics
from premem.errors import PremError

TABLES = ("samples", "perplexity", "checkpoints")
SORT_KEYS = {
    "samples": ["run", "step", "split", "example_id", "sample_idx"],
    "perplexity": ["run", "step", "example_id"],
    "checkpoints": ["run", "step"],
    "runs": ["run"],
}


def is_record_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / "samples.parquet").is_file()


def read_config(record_dir: str | Path) -> Params:
    """The resolved params a record was made with."""
    f = Path(record_dir) / "config.json"
    if not f.is_file():
        raise PremError(f"not a premem record folder (no config.json): {record_dir}")
    return Params.model_validate(json.loads(f.read_text())["params"])


def part_path(run_dir: Path, table: str, step: int) -> Path:
    return run_dir / "parts" / f"{table}-{step:08d}.parquet"


def concat_parts(record_dir: Path, table: str) -> pd.DataFrame:
    """All per-checkpoint parts of a table, in a fixed order so reruns give identical files."""
    parts = sorted((record_dir / "runs").glob(f"*/parts/{table}-*.parquet"))
    if not parts:
        raise PremError(f"no recorded {table} parts under {record_dir / 'runs'}")
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return df.sort_values(SORT_KEYS[table], kind="stable").reset_index(drop=True)


def read_runs(record_dir: str | Path) -> list[RunDynamics]:
    """Every run in a record folder, as RunDynamics (train accuracy and perplexity per checkpoint)."""
    record_dir = Path(record_dir)
    if not is_record_dir(record_dir):
        raise PremError(f"not a premem record folder (needs config.json and samples.parquet): {record_dir}")
    # One record, one task: one fit. Read as written, not validated: a record outlives schema changes.
    dataset = json.loads((record_dir / "config.json").read_text()).get("params", {}).get("task")
    samples = pd.read_parquet(record_dir / "samples.parquet")
    ppl = pd.read_parquet(record_dir / "perplexity.parquet")
    runs = pd.read_parquet(record_dir / "runs.parquet").set_index("run")
    stats_file = record_dir / "checkpoints.parquet"
    stats = pd.read_parquet(stats_file) if stats_file.exists() else None
    if "trained" not in ppl.columns:  # records written before held-out scoring
        ppl = ppl.assign(trained=True)
    out = []
    for run, s in samples.groupby("run", sort=True):
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
            lr=float(info.lr), epochs=int(info.epochs), data_fraction=float(info.data_fraction),
            example_ids=train.columns.to_numpy(), epoch_of_step=epoch.to_numpy(), extra=extra,
            heldout_perplexity=None if held is None else held.to_numpy(float),
            test_correct=test_correct.reindex(train.index).to_numpy(float),
            test_confidence=majority_share(test_s).reindex(index=train.index, columns=test_correct.columns).to_numpy(float),
        ))
    return out


def majority_share(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (step, example): the share of samples giving the most common answer (unparseable counts
    as its own answer). A label-free confidence, the input of ATC."""
    answers = samples.assign(answer=samples.answer.fillna("<unparseable>"))
    counts = answers.groupby(["step", "example_id", "answer"]).size()
    top = counts.groupby(["step", "example_id"]).max()
    total = counts.groupby(["step", "example_id"]).sum()
    return (top / total).unstack("example_id")
