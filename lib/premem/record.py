"""The dynamics record: premem's one format for training dynamics.

premem's sweep writes it, `premem record` writes it from any trainer's saved checkpoints,
`PreMemCallback` writes it during training; every metric, notebook and the claims ledger read it.
This module owns the format: the schema below writes, validates on read, and renders docs/record.md's
table, so the three writers cannot drift apart.

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
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from premem import io
from premem.checkpoints import finished_checkpoints
from premem.config import Params
from premem.dynamics import RunDynamics
from premem.errors import PremError
from premem.io import read_json  # noqa: F401 (record.read_json: callers read a record's files with it)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # str | int | number (int or float, NaN allowed) | bool
    meaning: str
    required: bool = True
    since: int = 1  # the FORMAT that added it: parts written before it need not hold it


SCHEMA: dict[str, tuple[Column, ...]] = {
    "runs": (
        Column("run", "str", "run name"),
        Column("lr", "number", "peak learning rate (NaN: not known)"),
        Column("epochs", "number", "epochs trained (NaN: not known)"),
        Column("data_fraction", "number", "fraction of the training set the run trained on"),
        Column("seed", "int", "training seed"),
        Column("n_train", "int", "training examples the run trained on"),
    ),
    "samples": (
        Column("run", "str", "run name"),
        Column("step", "int", "optimiser step of the checkpoint"),
        Column("epoch", "number", "epoch of the checkpoint"),
        Column("split", "str", "`train` or `test`"),
        Column("example_id", "str", "example id (the data's own, else its line or index)"),
        Column("sample_idx", "int", "which of the k samples"),
        Column("correct", "bool", "right by the task's answer checker (math-verify, gold first, by default)"),
        Column("correct_strict", "bool", "right by exact match of the normalised answer (`#### N`)"),
        Column("parse_ok", "bool", "an answer could be extracted"),
        Column("answer", "str", "the extracted answer (null: none)"),
    ),
    "perplexity": (
        Column("run", "str", "run name"),
        Column("step", "int", "optimiser step of the checkpoint"),
        Column("epoch", "number", "epoch of the checkpoint"),
        Column("example_id", "str", "example id"),
        Column("trained", "bool", "a training example (false: held out, for tau calibration)"),
        Column("nll", "number", "NLL of the gold target, summed over its tokens"),
        Column("n_tokens", "int", "target tokens (eos included)"),
        Column("perplexity", "number", "exp(nll / n_tokens)"),
    ),
    "checkpoints": (
        Column("run", "str", "run name"),
        Column("step", "int", "optimiser step of the checkpoint"),
        Column("epoch", "number", "epoch of the checkpoint"),
        Column("param_distance", "number", "‖θ−θ₀‖² from the weights training started at (NaN: not known)",
               required=False),
        Column("grad_variance", "number", "variance of minibatch gradients of the training loss", required=False),
    ),
}
TABLES = ("samples", "perplexity", "checkpoints")  # written per checkpoint; runs.parquet per record
# The format parts are written in, kept in each part's parquet metadata. Adding a table (to TABLES,
# with its FORMAT in TABLE_SINCE) or a column (Column.since) raises FORMAT: parts written before stay
# recorded (part_done asks each checkpoint only for what its format had), and readers see the new
# values where they were written (NaN before). tests/test_record_format.py adds both to a record.
FORMAT = 1
TABLE_SINCE: dict[str, int] = {}  # a table added after FORMAT 1 -> the FORMAT that added it
SORT_KEYS = {
    "samples": ["run", "step", "split", "example_id", "sample_idx"],
    "perplexity": ["run", "step", "example_id"],
    "checkpoints": ["run", "step"],
    "runs": ["run"],
}


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
    for table in TABLES:
        if TABLE_SINCE.get(table, 1) > written:
            continue  # a table added since this checkpoint was recorded
        try:
            names = pq.read_schema(part_path(folder, table, step)).names
        except Exception:
            return False
        if any(c.required and c.since <= written and c.name not in names for c in SCHEMA[table]):
            return False
    return True


def lost_steps(folder: Path) -> list[int]:
    """The checkpoints a finished run recorded (done.json) whose parts are now missing or damaged."""
    f = Path(folder) / "done.json"
    return [s for s in read_json(f).get("checkpoints", []) if not part_done(folder, s)] if f.is_file() else []


def write_part(folder: Path, table: str, step: int, df: pd.DataFrame) -> Path:
    """One checkpoint's rows of a table, checked against the schema, written atomically with the
    FORMAT it is written in."""

    check(df, table, f"{table} part of checkpoint {step} in {folder}", written=FORMAT)
    data = pa.Table.from_pandas(df, preserve_index=False)  # as DataFrame.to_parquet(index=False) writes it
    data = data.replace_schema_metadata({**(data.schema.metadata or {}), FORMAT_KEY: str(FORMAT).encode()})
    path = part_path(folder, table, step)
    with io.atomic_target(path) as tmp:
        pq.write_table(data, tmp)
    return path


FORMAT_KEY = b"premem_format"


def part_format(schema) -> int:
    """The FORMAT a part (its pyarrow schema) was written in: 1 for parts from before it was kept."""
    return int((schema.metadata or {}).get(FORMAT_KEY, b"1"))


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
    if not parts and TABLE_SINCE.get(table, 1) > 1:  # added since this record's checkpoints were recorded
        return pd.DataFrame({c.name: pd.Series(dtype=KIND_DTYPES[c.kind]) for c in SCHEMA[table]})
    if not parts:
        raise PremError(f"no recorded {table} parts under {Path(record_dir) / 'runs' / run}")
    df = pd.concat([read_table(p, table) for p in parts], ignore_index=True)
    return df.sort_values(SORT_KEYS[table], kind="stable").reset_index(drop=True)


def runs_table(record_dir: Path) -> pd.DataFrame:
    """runs.parquet's rows, from every run.json under the record."""
    rows = []
    for f in sorted((Path(record_dir) / "runs").glob("*/run.json")):
        info = read_json(f)
        rows.append({c.name: info.get(c.name) for c in SCHEMA["runs"]})
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
    if _finished(record_dir) and (record_dir / MANIFEST).is_file():
        return record_dir  # the tables already hold every part: nothing to write
    inputs = _inputs(record_dir)
    for table in TABLES:
        io.write_parquet(record_dir / f"{table}.parquet", concat_parts(record_dir, table))
    io.write_parquet(record_dir / "runs.parquet", runs_table(record_dir))
    io.write_json(record_dir / MANIFEST, dict(inputs=inputs))
    return record_dir


def _finished(record_dir: Path) -> bool:
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


_KIND_CHECKS = {
    "str": lambda s: pd.api.types.is_string_dtype(s) or (pd.api.types.is_object_dtype(s) and s.map(
        lambda v: v is None or isinstance(v, str)).all()) or s.isna().all(),
    "int": pd.api.types.is_integer_dtype,
    "number": lambda s: pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s),
    "bool": pd.api.types.is_bool_dtype,
}


KIND_DTYPES = {"str": object, "int": "int64", "number": "float64", "bool": "bool"}


def _kind_ok(c: Column, values: pd.Series) -> bool:
    if c.since > 1:  # NaN where parts from before the column did not hold it; the rest as written
        values = values.dropna()
        if not len(values):
            return True
        if c.kind == "int":
            return _KIND_CHECKS["number"](values) and bool((values % 1 == 0).all())
        if c.kind == "bool":
            return bool(values.map(lambda v: isinstance(v, (bool, np.bool_))).all())
    return _KIND_CHECKS[c.kind](values)


def check(df: pd.DataFrame, table: str, where, written: int = 1) -> pd.DataFrame:
    """The table's columns and kinds as SCHEMA says, or one error naming `where` and the column.
    `written`: the FORMAT the rows were written in (a table read back may mix formats: a column
    added since FORMAT 1 is absent from older parts, and part_done checks each part)."""
    missing = [c.name for c in SCHEMA[table] if c.required and c.since <= written and c.name not in df.columns]
    if missing:
        raise PremError(f"{where}: missing columns {missing} of the {table} table (the record format is in "
                        "premem.record.SCHEMA)")
    for c in SCHEMA[table]:
        if c.name in df.columns and len(df) and not _kind_ok(c, df[c.name]):
            raise PremError(f"{where}: column '{c.name}' holds {df[c.name].dtype}, expected {c.kind}")
    return df


def read_table(f: Path, table: str) -> pd.DataFrame:
    """A parquet table of the record, validated; missing, truncated or foreign files are one error."""
    if not f.is_file():
        raise PremError(f"{f}: missing (a record holds {', '.join(t + '.parquet' for t in SCHEMA)})")
    try:
        df = pd.read_parquet(f)
    except Exception as e:  # pyarrow raises several types for damaged files; all mean the same here
        raise PremError(f"{f}: not a readable parquet table ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return check(df, table, f)


def is_record_dir(path: str | Path) -> bool:
    """A folder holding a record, or what is left of one: its config.json, a table, or a run.json
    (`read_runs` then says what is missing, rather than another reader failing on it)."""
    path = Path(path)
    return ((path / "config.json").is_file() or any((path / f"{t}.parquet").exists() for t in SCHEMA)
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
    return dynamics(*_tables(record_dir), _dataset(record_dir))


def read_run_parts(record_dir: str | Path, run: str) -> RunDynamics:
    """One run from its parts alone, e.g. while it is being recorded."""
    record_dir = Path(record_dir)
    return dynamics(*_tables(record_dir, run), _dataset(record_dir))[0]


def _dataset(record_dir: Path) -> str | None:
    # One record, one task: one fit. Read as written, not validated: a record outlives schema changes.
    return read_json(record_dir / "config.json").get("params", {}).get("task")


def _tables(record_dir: Path, run: str | None = None):
    """(samples, perplexity, runs, checkpoints): the finished tables, or the parts (of `run`)."""
    if run is None and _finished(record_dir):
        tables = [read_table(record_dir / f"{t}.parquet", t) for t in ("samples", "perplexity", "runs")]
        stats_file = record_dir / "checkpoints.parquet"
        return (*tables, read_table(stats_file, "checkpoints") if stats_file.exists() else None)
    runs = runs_table(record_dir)
    if run is not None:
        runs = runs[runs.run == run]
    return (concat_parts(record_dir, "samples", run or "*"), concat_parts(record_dir, "perplexity", run or "*"),
            runs, concat_parts(record_dir, "checkpoints", run or "*"))


def dynamics(samples: pd.DataFrame, ppl: pd.DataFrame, runs: pd.DataFrame, stats: pd.DataFrame | None,
             dataset: str | None) -> list[RunDynamics]:
    """RunDynamics of every run in the tables."""
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


def schema_markdown() -> str:
    """docs/record.md's table of the record format, from SCHEMA."""
    lines = ["| table | column | kind | meaning |", "|---|---|---|---|"]
    for table, columns in SCHEMA.items():
        for i, c in enumerate(columns):
            optional = "" if c.required else " (optional)"
            lines.append(f"| {f'`{table}.parquet`' if i == 0 else ''} | `{c.name}` | {c.kind} | {c.meaning}{optional} |")
    return "\n".join(lines) + "\n"
