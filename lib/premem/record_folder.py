"""Who may write a record folder, and what premem may delete there.

A record is written only into a new or empty folder, or into a record of its own (`check_target`);
`--force` starts another config's record afresh by deleting only the entries premem writes
(OWN_ENTRIES), never a file of the user's beside them; the data files a record measured are kept by
sha256 (a changed file is refused). One writer at a time holds the folder's lock (`locked`): a second
says who holds it and waits; a lock this very process still holds, or one whose holder ended
without releasing it, is taken over with a line saying so, and temporaries of killed writers go.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from premem import io, record
from premem.config import Params
from premem.errors import PremError
from premem.io import read_json
from premem.record import versions

# Everything premem writes at a record's top level (the sweep's tables, the robustness stage's
# cache, a curation's folders, a notebook's results and figures when pointed at the record, a
# launcher's job logs):
# `--force` deletes these and nothing else. A stage that writes a new entry names it here
# (tests/test_trust.py fails on an unnamed one).
OWN_ENTRIES = ("config.json", "tables.json", "runs", "samples.parquet", "perplexity.parquet", "checkpoints.parquet",
               "runs.parquet", "robustness", "curation.parquet", "efficiency.parquet", "efficiency.key",
               "base.json", "selections", "collected", "collected_accuracy.parquet", "ifd", "results", "figures",
               "jobs")  # jobs: the Slurm launcher's logs


def check_target(out: str | Path, cfg: Params, *, force: bool = False, extra_keys: tuple[str, ...] = ()) -> dict | None:
    """Whether `create` may write into `out`, checked without writing anything: a new or empty
    folder, or a record of the same config (of another config only with `force`); never a folder
    of anything else, and never one whose data files changed since they were recorded. Returns
    the existing config.json, if any."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PremError(f"--out {out} is a file, not a folder: a record is a folder")
    config_file = out / "config.json"
    old = read_json(config_file) if config_file.is_file() else None
    theirs = sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []
    if theirs and not is_own_record(out):
        raise PremError(f"{out} holds files that are not a premem record ({', '.join(theirs[:5])}): a record is "
                        "written into a new or empty folder, or into a record of its own; choose another --out")
    new = cfg.hash(*extra_keys)
    if old is not None and old.get("hash") != new and not force:
        raise PremError(f"{out} holds a record of another config (hash {old.get('hash')}, now {new}): "
                        "choose another --out or pass --force")
    if old is not None and old.get("hash") == new and not force:
        for split, (path, digest) in data_digests(cfg).items():
            before = old.get("data", {}).get(split)
            if before is not None and before != digest:
                raise PremError(f"{path} changed since it was recorded into {out} (sha256 {before[:12]}..., now "
                                f"{digest[:12]}...): its rows are no longer what was measured; record the new "
                                "file into another --out (or --force to start this record afresh)")
    return old


def data_digests(cfg: Params) -> dict[str, tuple[str, str]]:
    """{split: (its files, sha256 of their bytes)} of the params' data files: what a record
    measured, by content (a path alone would let an edited file pass for the recorded one)."""
    out = {}
    for split, files in sorted((cfg.data_files or {}).items()):
        paths = [Path(f) for f in ([files] if isinstance(files, str) else files if isinstance(files, list) else [])]
        if paths and all(p.is_file() for p in paths):  # a missing file is the data loader's error to give
            digest = hashlib.sha256()
            for p in paths:
                digest.update(p.read_bytes())
            out[split] = (", ".join(map(str, paths)), digest.hexdigest())
    return out


def create(out: str | Path, cfg: Params, *, force: bool = False, extra_keys: tuple[str, ...] = (),
           command: str = "") -> Path:
    """Create a record folder for `cfg`, or resume one made with the same config hash; another
    config's record is refused unless `force` starts it afresh (deleting only OWN_ENTRIES). Each
    call appends its versions and time to the record's provenance, so a record keeps what produced
    every part of it; the sha256 of every data file is kept too (check_target compares it)."""
    out = Path(out)
    config_file = out / "config.json"
    new = cfg.hash(*extra_keys)
    old = check_target(out, cfg, force=force, extra_keys=extra_keys)
    if force and out.exists():
        # Only what premem writes into a record (and its temporaries): the lock stays (whoever
        # holds it holds this folder), and a file of the user's beside the record stays too.
        for p in sorted(out.iterdir()):
            if p.name in OWN_ENTRIES or io.is_temporary(p):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        old = None
    out.mkdir(parents=True, exist_ok=True)
    history = (old or {}).get("provenance", [])
    if old and not history and "versions" in old:  # a record from before provenance was kept
        history = [dict(time=None, command="(first writer)", versions=old["versions"])]
    history.append(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), command=command, versions=versions()))
    data = {split: digest for split, (_, digest) in data_digests(cfg).items()}
    io.write_json(config_file, dict(hash=new, params=cfg.model_dump(mode="json"), provenance=history,
                                    **(dict(data=data) if data else {})))
    return out


LOCK = ".lock"


_HELD: dict[str, object] = {}  # record folder -> the open lock file, for each lock this process holds


@contextlib.contextmanager
def locked(record_dir: str | Path, command: str = ""):
    """Hold the record folder's lock while writing: a second writer of the same folder (another
    sweep, premem record, a callback) says who holds it and waits, then finds done work done. A lock
    this very process still holds (a callback's run stopped by Ctrl-C in a notebook, trained again)
    or one whose holder ended without releasing it is taken over with a line saying so, and the
    temporaries of writers killed mid-write are removed."""
    record_dir = Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    key = str(record_dir.resolve())
    stale = _HELD.pop(key, None)
    if stale is not None:  # closing our own earlier open file releases its flock
        print(f"premem: {record_dir}: taking over the lock this process still held ({_holder(stale)})",
              file=sys.stderr)
        stale.close()
    with open(record_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if stale is None and _holder(f):  # released cleanly, a holder empties the file
                print(f"premem: {record_dir}: taking over the lock of {_holder(f)}, which ended without "
                      "releasing it", file=sys.stderr)
        except BlockingIOError:
            print(f"premem: {record_dir} is being written by {_holder(f) or 'another process'}; waiting for it to "
                  "finish", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        _HELD[key] = f
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({command or 'premem'}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        io.remove_temporaries(record_dir)
        try:
            yield record_dir
        finally:
            if _HELD.get(key) is f:
                del _HELD[key]
            if not f.closed:  # else taken over by a later writer of this process, which holds it now
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)


def _holder(f) -> str:
    f.seek(0)
    return f.read().strip()


def is_own_record(path: str | Path) -> bool:
    """A folder premem made a record in: its config.json names a hash and params."""
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "hash" in data and "params" in data


def check_output(out: str | Path, cfg: Params | None, record_dir: str | Path | None = None) -> Path:
    """An output premem is about to write (a table, rows) is neither an input it read (the params'
    data files) nor inside a record, whose files only the record's writers write."""
    out = Path(out).resolve()
    inputs = [Path(f).resolve() for f in (cfg.data_files or {}).values() if isinstance(f, str)] if cfg else []
    if out in inputs:
        raise PremError(f"--out {out} is a data file the record was measured on: premem does not overwrite its "
                        "inputs; choose another --out")
    folders = [Path(record_dir).resolve()] if record_dir is not None and record.is_record_dir(record_dir) else []
    inside = [d for d in folders if out.is_relative_to(d)] + [d for d in out.parents if is_own_record(d)]
    if inside:
        raise PremError(f"--out {out} is inside the record {inside[0]}: write tables outside it")
    return out
