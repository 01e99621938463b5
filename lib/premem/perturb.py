"""Claim 3's stage: sample k answers to every perturbed training query of a run's final checkpoint.

For each perturbation of premem.robustness.PERTURBATIONS the run's final weights answer every
training query perturbed, each answer is graded against the (perturbed) gold answer, and the
example's robustness is the share right. Tables are cached in the record (robustness.cache_path):
a rerun with the same (k, seed, tau) samples nothing. `sample_perturbations` is `premem perturb`
and notebook 06's setup; the claim (premem.claims.flags_fragile) only reads what it cached.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from premem import bars, checkpoints, grading, io, launcher, record, recorder, robustness, tasks, training
from premem import data as data_lib
from premem.config import Params
from premem.errors import PremError


def robustness_table(record_dir: str | Path, run: str | None, *, perturbation: str, k: int | None = None,
                     seed: int = 0, tau: float | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per training example of `run` (None: robustness.default_run): robustness under
    `perturbation` at the final checkpoint, beside final pre-memorization and train accuracy. `k`
    defaults to the record's robustness_k, else its k; `tau` to the record's `metrics.chosen_tau`.
    Cached: a rerun with the same (k, seed, tau) reads the table back without sampling."""
    record_dir = Path(record_dir)
    robustness.check([perturbation])
    cfg, dyn, k, tau = robustness.resolved(record_dir, run, k, tau)
    run = dyn.run
    cached = robustness.cache_path(record_dir, run, perturbation, k, seed, tau)
    if cached.exists():
        return pd.read_parquet(cached)
    examples, _ = data_lib.run_examples(record_dir, run, cfg)
    acc = robustness.recorded_accuracy(dyn, tau).set_index("example_id")
    ckpt = record.final_checkpoint(record_dir, run)
    step = json.loads((ckpt / checkpoints.MARKER).read_text())["step"]
    if step != acc.step.iloc[0]:  # weights and record must be the same checkpoint
        raise PremError(f"run {run}: final checkpoint is step {step} but the record ends at step {acc.step.iloc[0]}")
    prompts, forced, golds = robustness.perturbed_queries(examples, perturbation, cfg.prompt_template, seed)
    lm, tok = training.load_checkpoint(ckpt)
    completions = recorder.sample_answers(cfg, lm, ckpt, tok, prompts, k, seed, progress)
    rows = []
    for ex, outs, pre, gold in zip(examples, completions, forced, golds):
        grades = grading.grade_many([pre + c for c in outs], gold, tasks.answer_checker(cfg))
        rows.append(dict(run=run, example_id=ex.id, perturbation=perturbation,
                         robustness=float(np.mean([g.correct for g in grades])),
                         pre_mem_acc=float(acc.pre_mem_acc[ex.id]), train_acc=float(acc.train_acc[ex.id]), k=k))
    table = pd.DataFrame(rows, columns=robustness.COLUMNS)
    io.write_parquet(cached, table)
    return table


def _table_job(record_dir: str, run: str, perturbation: str, k, seed: int, tau: float) -> pd.DataFrame:
    return robustness_table(record_dir, run, perturbation=perturbation, k=k, seed=seed, tau=tau, progress=False)


def robustness_tables(record_dir: str | Path, run: str | None, perturbations, *, k: int | None = None,
                      seed: int = 0, tau: float | None = None, workers: int = 1, progress: bool = False
                      ) -> pd.DataFrame:
    """`robustness_table` for each perturbation, concatenated in their order; uncached ones sample
    in `workers` one-thread processes (launcher.map_one_thread), which does not change the tables.
    `progress`: a bar of the perturbations sampled, moving as each one's table is cached."""
    robustness.check(perturbations)
    _, dyn, n, tau = robustness.resolved(record_dir, run, k, tau)  # one run and tau for every worker
    # Only what is not cached yet goes to workers: a cached stage starts no process.
    todo = [robustness.cache_path(record_dir, dyn.run, p, n, seed, tau) for p in perturbations]
    todo = {p: path for p, path in zip(perturbations, todo) if not path.exists()}
    bar = tqdm(total=len(todo), desc=f"perturb {dyn.run}", unit="perturbation", disable=not (progress and todo))
    with bars.counting(bar, lambda: sum(path.exists() for path in todo.values())):
        launcher.map_one_thread(_table_job, [(str(record_dir), dyn.run, p, k, seed, tau) for p in todo], workers)
    bar.close()
    return robustness.read_tables(record_dir, dyn.run, perturbations, k=k, seed=seed, tau=tau)


def sample_perturbations(record_dir: str | Path, cfg: Params | None = None, tau: float | None = None,
                         progress: bool = True) -> pd.DataFrame:
    """The perturbations claim 3 reads, with the record's params (or `cfg`): its robustness_run
    (None: the most memorising run), the perturbations that apply to its task, robustness_k and
    robustness_seed, sampled in its `workers` processes, with a bar (`progress`)."""
    cfg = cfg or record.read_config(record_dir)
    run = cfg.robustness_run or robustness.default_run(record_dir)
    return robustness_tables(record_dir, run, robustness.kinds(cfg), k=cfg.robustness_k, seed=cfg.robustness_seed,
                             tau=tau, workers=cfg.workers, progress=progress)
