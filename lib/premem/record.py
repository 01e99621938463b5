"""The dynamics record: premem's one format for training dynamics.

premem's sweep writes it, `premem record` writes it from any trainer's saved checkpoints,
`PreMemCallback` writes it during training; every metric, notebook and the claims ledger read it.
This module writes and reads it; the format itself (SCHEMA, the check on every read and write,
docs/record.md's table) is premem.record_schema's, so the three writers cannot drift apart.

    <record>/config.json                 resolved params, their hash, and provenance: the versions
                                         and time of every session that wrote to the record
    <record>/samples.parquet ...         the tables of SCHEMA, concatenations of the parts
    <record>/runs/<run>/run.json         the run: lr, epochs, data_fraction, seed, n_train, example_ids
    <record>/runs/<run>/parts/<table>-<step>.parquet   one per recorded checkpoint, written atomically
    <record>/runs/<run>/done.json        the run is finished (its recorded steps)
    <record>/runs/<run>/train/           the trainer's checkpoints, when premem trained the run

A killed writer loses at most the checkpoint in progress; `finish` rebuilds the top-level tables
from the parts, identically on every rerun. Who may write a record folder (creating it, `--force`,
the lock) is premem.record_folder's.
"""
from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from premem import io, record_schema
from premem.checkpoints import finished_checkpoints
from premem.config import Params
from premem.dynamics import RunDynamics, from_tables
from premem.errors import PremError
from premem.record_schema import FORMAT_KEY, KIND_DTYPES, check, part_format, read_table
from premem.io import read_json  # noqa: F401 (record.read_json: callers read a record's files with it)


# ---- writing --------------------------------------------------------------------------------------

def versions() -> dict:
    """Versions of the packages that shape a record; None for one not installed (premem itself
    when run from a source tree on PYTHONPATH, as on a bare GPU machine)."""

    def get(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    names = ["premem", "torch", "transformers", "trl", "peft", "numpy", "pandas"]
    return dict(python=platform.python_version(), **{n: get(n) for n in names})


def default_dir(cfg: Params) -> Path:
    """The record folder of `cfg` when no other is given (premem sweep, premem record, the callback):
    <out_dir>/<name>-<hash>."""
    return cfg.path("out_dir") / f"{cfg.name}-{cfg.hash()}"


def example_digest(ex) -> str:
    """A training row by content (question, solution, answer): run.json keeps one per example id,
    so a resumed run or `--below` never takes another row under a recorded id."""
    return hashlib.sha256(json.dumps([ex.question, ex.solution, ex.answer]).encode()).hexdigest()[:16]


def run_dir(record_dir: str | Path, run: str) -> Path:
    return Path(record_dir) / "runs" / run


def check_run_name(run: str) -> str:
    """A run's name is one folder name: no path separators, globs or dots to climb out with."""
    if not run or run in (".", "..") or run.startswith(".") or any(c in run for c in "/\\*?[]"):
        raise PremError(f"run name {run!r} cannot name a folder of the record: use letters, digits and ._-=+ "
                        "(--run NAME / run=)")
    return run


def start_run(record_dir: str | Path, run: str, *, lr, epochs, data_fraction, seed: int, examples,
              source: str | None = None, recording: dict | None = None) -> Path:
    """Write (or check, on resume) a run's run.json; returns its folder. `examples` are the
    training examples (premem.tasks.Example), kept by id and content (example_digest); `source` (the
    folder a trainer saved into) and `recording` (what is recorded: fraction, baselines) tell one
    run from another of the same name: resuming with other ones is refused, never merged."""
    folder = run_dir(record_dir, check_run_name(run))
    if epochs is not None and float(epochs).is_integer():
        epochs = int(epochs)  # TrainingArguments holds 3.0; the sweep and trainer_state.json say 3
    ids = [ex.id for ex in examples]
    info = dict(run=run, lr=lr, epochs=epochs, data_fraction=data_fraction, seed=int(seed), n_train=len(ids),
                example_ids=ids, source=source, recording=recording,
                example_digests={ex.id: example_digest(ex) for ex in examples})
    f = folder / "run.json"
    if f.exists():
        before = read_json(f)
        if "example_digests" not in before:  # a run recorded before digests were kept: left as it was
            del info["example_digests"]
        for key, what in (("example_ids", "other training examples"), ("source", "checkpoints from elsewhere"),
                          ("recording", "other recording settings")):
            if before.get(key) != info[key]:
                raise PremError(f"{f}: run {run} holds {what} ({key}: {str(before.get(key))[:80]}); record this "
                                "one under another name (--run / run=) or into another --out")
        changed = [i for i, d in info.get("example_digests", {}).items() if before["example_digests"].get(i) != d]
        if changed:
            raise PremError(f"{f}: run {run} recorded other rows under the same ids ({len(changed)} changed, first "
                            f"{changed[0]!r}): the data changed since; record it under another name or --out")
    io.write_json(f, info)
    return folder


def run_info(record_dir: str | Path, run: str) -> dict:
    return read_json(run_dir(record_dir, run) / "run.json")


def part_path(folder: Path, table: str, step: int) -> Path:
    return Path(folder) / "parts" / f"{table}-{step:08d}.parquet"


def part_done(folder: Path, step: int) -> bool:
    """A checkpoint's parts are all there and readable (a damaged one counts as not recorded, so it
    is recorded again: parts are written atomically, so damage came from outside)."""
    try:  # the samples part is written last: its format is the checkpoint's
        written = part_format(pq.read_schema(part_path(folder, "samples", step)))  # the footer alone: cheap
    except Exception:  # missing, truncated, not parquet
        return False
    for table in record_schema.TABLES:
        if record_schema.TABLE_SINCE.get(table, 1) > written:
            continue  # a table added since this checkpoint was recorded
        try:
            names = pq.read_schema(part_path(folder, table, step)).names
        except Exception:
            return False
        if any(c.required and c.since <= written and c.name not in names for c in record_schema.SCHEMA[table]):
            return False
    return True


def lost_steps(folder: Path) -> list[int]:
    """The checkpoints a finished run recorded (done.json) whose parts are now missing or damaged."""
    f = Path(folder) / "done.json"
    return [s for s in read_json(f).get("checkpoints", []) if not part_done(folder, s)] if f.is_file() else []


def write_part(folder: Path, table: str, step: int, df: pd.DataFrame) -> Path:
    """One checkpoint's rows of a table, checked against the schema, written atomically with the
    FORMAT it is written in (premem.record_schema)."""
    check(df, table, f"{table} part of checkpoint {step} in {folder}", written=record_schema.FORMAT)
    data = pa.Table.from_pandas(df, preserve_index=False)  # as DataFrame.to_parquet(index=False) writes it
    metadata = {**(data.schema.metadata or {}), FORMAT_KEY: str(record_schema.FORMAT).encode()}
    data = data.replace_schema_metadata(metadata)
    path = part_path(folder, table, step)
    with io.atomic_target(path) as tmp:
        pq.write_table(data, tmp)
    return path


def finish_run(folder: Path, steps: list[int]) -> None:
    io.write_json(Path(folder) / "done.json", dict(checkpoints=[int(s) for s in steps]))


def is_done(folder: Path) -> bool:
    """The run finished, and everything it recorded is still there."""
    return (Path(folder) / "done.json").exists() and not lost_steps(folder)


def reopen_run(folder: Path) -> None:
    """A finished run that lost parts is unfinished again, so its writer records them anew."""
    (Path(folder) / "done.json").unlink(missing_ok=True)


def final_checkpoint(record_dir: str | Path, run: str) -> Path:
    """The last checkpoint folder of a run premem trained (its weights are always kept)."""
    train = run_dir(record_dir, run) / "train"
    ckpts = finished_checkpoints(train)
    if not ckpts:
        raise PremError(f"run {run}: no finished checkpoints under {train}")
    return Path(ckpts[-1]["path"])


def concat_parts(record_dir: Path, table: str, run: str = "*") -> pd.DataFrame:
    """All per-checkpoint parts of a table (of one run, or all), in a fixed order so reruns give
    identical files."""
    parts = sorted((Path(record_dir) / "runs").glob(f"{run}/parts/{table}-*.parquet"))
    if not parts and record_schema.TABLE_SINCE.get(table, 1) > 1:  # added since this record's checkpoints were recorded
        return pd.DataFrame({c.name: pd.Series(dtype=KIND_DTYPES[c.kind]) for c in record_schema.SCHEMA[table]})
    if not parts:
        raise PremError(f"no recorded {table} parts under {Path(record_dir) / 'runs' / run}")
    df = pd.concat([read_table(p, table) for p in parts], ignore_index=True)
    return df.sort_values(record_schema.SORT_KEYS[table], kind="stable").reset_index(drop=True)


def runs_table(record_dir: Path) -> pd.DataFrame:
    """runs.parquet's rows, from every run.json under the record."""
    rows = []
    for f in sorted((Path(record_dir) / "runs").glob("*/run.json")):
        info = read_json(f)
        rows.append({c.name: info.get(c.name) for c in record_schema.SCHEMA["runs"]})
    if not rows:
        raise PremError(f"no runs (runs/<run>/run.json) in {record_dir}")
    return _numbers(pd.DataFrame(rows)).sort_values("run").reset_index(drop=True)


def _numbers(runs: pd.DataFrame) -> pd.DataFrame:
    """lr, epochs and data_fraction as numbers: NaN where a run's trainer did not say (None)."""
    for c in ("lr", "epochs", "data_fraction"):
        if runs[c].isna().any() or runs[c].dtype == object:
            runs[c] = runs[c].astype(float)
    return runs


MANIFEST = "tables.json"  # what the top-level tables were built from; written last by finish


def _inputs(record_dir: Path) -> dict[str, int]:
    """Every part and run.json of the record, with its size: what finish builds the tables from."""
    files = list((record_dir / "runs").glob("*/parts/*.parquet")) + list((record_dir / "runs").glob("*/run.json"))
    files = [p for p in files if not io.is_temporary(p)]
    return {str(p.relative_to(record_dir)): p.stat().st_size for p in sorted(files)}


def finish(record_dir: str | Path) -> Path:
    """Concatenate every run's parts into the top-level tables (identical on every rerun), then
    write the manifest of what they hold: tables without a matching manifest (a finish that was
    killed, runs recorded since) are never read as the record."""
    record_dir = Path(record_dir)
    if finished(record_dir) and (record_dir / MANIFEST).is_file():
        return record_dir  # the tables already hold every part: nothing to write
    inputs = _inputs(record_dir)
    for table in record_schema.TABLES:
        io.write_parquet(record_dir / f"{table}.parquet", concat_parts(record_dir, table))
    io.write_parquet(record_dir / "runs.parquet", runs_table(record_dir))
    io.write_json(record_dir / MANIFEST, dict(inputs=inputs))
    return record_dir


def finished(record_dir: Path) -> bool:
    """Whether the top-level tables are the record: they exist and hold every part there is now."""
    if not (record_dir / "samples.parquet").exists():
        return False
    manifest = record_dir / MANIFEST
    if manifest.is_file():
        return read_json(manifest).get("inputs") == _inputs(record_dir)
    # No manifest: tables written by hand (no parts), or by premem before manifests were kept (then
    # after every part: a part recorded since is newer than them).
    parts = [p.stat().st_mtime for p in (record_dir / "runs").glob("*/parts/*.parquet")]
    return not parts or (record_dir / "samples.parquet").stat().st_mtime >= max(parts)


# ---- reading --------------------------------------------------------------------------------------


def is_record_dir(path: str | Path) -> bool:
    """A folder holding a record, or what is left of one: its config.json, a table, or a run.json
    (`read_runs` then says what is missing, rather than another reader failing on it)."""
    path = Path(path)
    return ((path / "config.json").is_file() or any((path / f"{t}.parquet").exists() for t in record_schema.SCHEMA)
            or any((path / "runs").glob("*/run.json")))


def read_config(record_dir: str | Path) -> Params:
    """The resolved params a record was made with."""
    f = Path(record_dir) / "config.json"
    if not f.is_file():
        raise PremError(f"not a premem record folder (no config.json): {record_dir}")
    data = read_json(f)
    if "params" not in data:
        raise PremError(f"{f}: no 'params' entry; not a premem record's config")
    try:
        return Params.model_validate(data["params"])
    except Exception as e:
        raise PremError(f"{f}: params do not validate ({str(e).splitlines()[0]})") from None


def read_runs(record_dir: str | Path) -> list[RunDynamics]:
    """Every run in a record folder, as RunDynamics (train accuracy and perplexity per checkpoint).
    A record still being written (no top-level tables yet) is read from its parts as they stand."""
    record_dir = Path(record_dir)
    if not (record_dir / "config.json").is_file():
        raise PremError(f"not a premem record folder (no config.json): {record_dir}")
    return from_tables(*_tables(record_dir), _dataset(record_dir))


def read_run_parts(record_dir: str | Path, run: str) -> RunDynamics:
    """One run from its parts alone, e.g. while it is being recorded."""
    record_dir = Path(record_dir)
    return from_tables(*_tables(record_dir, run), _dataset(record_dir))[0]


def _dataset(record_dir: Path) -> str | None:
    # One record, one task: one fit. Read as written, not validated: a record outlives schema changes.
    return read_json(record_dir / "config.json").get("params", {}).get("task")


def _tables(record_dir: Path, run: str | None = None):
    """(samples, perplexity, runs, checkpoints): the finished tables, or the parts (of `run`)."""
    if run is None and finished(record_dir):
        tables = [read_table(record_dir / f"{t}.parquet", t) for t in ("samples", "perplexity", "runs")]
        stats_file = record_dir / "checkpoints.parquet"
        return (*tables, read_table(stats_file, "checkpoints") if stats_file.exists() else None)
    runs = runs_table(record_dir)
    if run is not None:
        runs = runs[runs.run == run]
    return (concat_parts(record_dir, "samples", run or "*"), concat_parts(record_dir, "perplexity", run or "*"),
            runs, concat_parts(record_dir, "checkpoints", run or "*"))


