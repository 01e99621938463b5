"""Shipped records: a finished record's tables, without its checkpoints, carried by the repository
in records/<name>-<hash>/, so its claims can be read (the ledger's column, a notebook through its
params) on a machine that never ran it. A record that costs an hour of these CPUs (the SmolLM2-135M
sweep) is then made once, by the commands that made it (`premem sweep`, `premem perturb`), and
shipped with `premem ship`.

A shipped record is read only where the params' own record folder (<out_dir>/<name>-<hash>) holds
no record: a record made here is always the one read. Its hash is the params' (config.hash), so an
edited params file names another record and the shipped one is no longer taken for it. `swept` says
whether a params file's record is there to read (the notebooks' setup and `premem reproduce` sweep
only when it is not).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from premem import io, record, run_grid
from premem.config import Params, project_root
from premem.errors import PremError

SHIPPED = "records"  # under the project root
# What a shipped record holds: the record's tables, its config, and claim 3's perturbation cache.
# Not its runs/ (the parts, already in the tables, and the checkpoints: 7 GB for SmolLM2's sweep).
TABLES = ("config.json", "samples.parquet", "perplexity.parquet", "checkpoints.parquet", "runs.parquet")
CACHES = ("robustness",)


def shipped_dir(cfg: Params, root: str | Path | None = None) -> Path:
    return Path(root or project_root()) / SHIPPED / record.default_dir(cfg).name


def is_shipped(folder: str | Path) -> bool:
    return Path(folder).resolve().parent == (project_root() / SHIPPED).resolve()


def find_dir(cfg: Params) -> Path:
    """The record `cfg`'s claims read: its own folder when that holds a record, else the shipped
    copy when there is one, else its own folder (where a sweep would write it)."""
    own, shipped = record.default_dir(cfg), shipped_dir(cfg)
    return shipped if not record.is_record_dir(own) and record.is_record_dir(shipped) else own


def swept(cfg: Params) -> bool:
    """Whether `cfg`'s record is there to read: made here with every run of its grid finished and
    its tables up to date, or shipped (finished by construction: `ship` takes no other)."""
    folder = find_dir(cfg)
    if is_shipped(folder):
        return True
    return (record.is_record_dir(folder) and record.finished(folder)
            and all(record.is_done(record.run_dir(folder, spec.run)) for spec in run_grid.grid(cfg)))


def ship(record_dir: str | Path, root: str | Path | None = None) -> Path:
    """Copy a finished record's tables, config and caches (TABLES, CACHES) into the shipped folder
    of its params, replacing an earlier shipped copy whole; returns the copy's folder."""
    record_dir = Path(record_dir)
    cfg = record.read_config(record_dir)
    if not record.finished(record_dir):
        raise PremError(f"{record_dir}: not a finished record (run the command that made it to its end first)")
    missing = [name for name in TABLES[:2] if not (record_dir / name).is_file()]
    if missing:
        raise PremError(f"{record_dir}: no {missing[0]}; nothing to ship")
    dest = shipped_dir(cfg, root)
    foreign = sorted(p.name for p in dest.iterdir() if p.name not in TABLES + CACHES) if dest.is_dir() else []
    if foreign:  # an earlier copy is replaced whole: never over a file premem did not put there
        raise PremError(f"{dest / foreign[0]}: not a file of a shipped record; move it away to ship again")
    with io.atomic_folder(dest) as tmp:  # complete or absent
        for name in TABLES:
            if (record_dir / name).is_file():
                shutil.copy2(record_dir / name, tmp / name)
        for name in CACHES:
            if (record_dir / name).is_dir():
                shutil.copytree(record_dir / name, tmp / name,
                                ignore=lambda folder, names: [n for n in names if n.startswith(".")])
        if dest.exists():  # an earlier copy of this record (premem's files only), once the new one is whole
            shutil.rmtree(dest)
    return dest
