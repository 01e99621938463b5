"""What a live notebook calls first: its params, and the record its claim reads.

`open_record` (notebooks 02-06), `perturbed` (06) and `curated` (07) run the stage a notebook
needs when its record is missing or unfinished, with its progress shown, and otherwise only read
(a stage is imported only to run: a notebook on cached records starts without torch). Running and
storing the notebooks themselves is premem.reproduce's.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from premem import claims, record, robustness, shipped
from premem.config import SWITCH, from_notebook, load_params, project_root, shown
from premem.curation_efficiency import folder_of


def notebook_params(namespace: dict):
    """A live notebook's params: $PREMEM_NOTEBOOK_PARAMS when set (the test suite's smoke run), else
    its parameters (`params_file`, or the flat keys `papermill -f` injects)."""
    switched = os.environ.get(SWITCH)
    if switched:
        path = Path(switched)
        print(f"${SWITCH} is set: this notebook reads {switched}, not its own params")
        return load_params(path if path.is_absolute() else project_root() / path)
    return from_notebook(namespace)


def open_record(namespace: dict):
    """The setup of notebooks 02-06: the sweep record its claims stand on (a claims.Sweep).

    By default the notebook's params are swept when their record is missing or unfinished (else it
    is only read) and figures go to their figures_dir. With `record_dir` set (`papermill -p
    record_dir runs/mine`) it reads that record instead, whatever wrote it (premem record,
    PreMemCallback, a sweep), with the params the record was made with, and saves its results and
    figures into <record_dir>/results and /figures.
    """
    given = namespace.get("record_dir")
    if given:
        record_dir = Path(given) if Path(given).is_absolute() else project_root() / given
        # Results and figures go into the record: never over the project's.
        cfg = record.read_config(record_dir).model_copy(
            update=dict(out_dir=str(record_dir), figures_dir=str(record_dir / "figures")))
        s = claims.open_sweep(cfg, record_dir)
    else:
        cfg = notebook_params(namespace)
        if not shipped.swept(cfg):
            from premem import sweep  # the stage, imported only to run (torch, transformers: seconds)

            sweep.sweep(cfg)
        s = claims.open_sweep(cfg)
    print(f"{s.cfg.name}: {len(s.runs)} runs from {shown(s.record_dir)}")
    print(s.threshold)
    return s


def perturbed(s) -> None:
    """The setup of notebook 06: claim 3's perturbations for the record `s` (a claims.Sweep),
    sampled when not cached yet, each in one of cfg.workers processes."""
    cfg = s.cfg
    run = cfg.robustness_run or robustness.default_run(s.record_dir)
    k = robustness.samples_per_query(cfg, cfg.robustness_k)
    if all(robustness.cache_path(s.record_dir, run, p, k, cfg.robustness_seed, s.tau).exists()
           for p in robustness.kinds(cfg)):
        return
    from premem import perturb  # the stage, imported only to run

    perturb.sample_perturbations(s.record_dir, cfg, tau=s.tau)


def curated(namespace: dict):
    """The setup of notebook 07: its params, curated when their curation is missing or unfinished (a
    bar per round)."""
    cfg = notebook_params(namespace)
    if not is_curated(cfg):
        from premem import curation  # the stage, imported only to run

        curation.curate(cfg)
    return cfg


def is_curated(cfg) -> bool:
    """The params' curation finished for every rule and seed they name (seeds and rules added to a
    finished curation are curated, reusing the rest)."""
    folder = folder_of(cfg)
    if not (folder / "efficiency.parquet").is_file():
        return False
    table = pd.read_parquet(folder / "curation.parquet")
    chains = set(zip(table.strategy, table.seed))
    return all((s, seed) in chains for s in cfg.curation_strategies for seed in cfg.curation_seeds)
