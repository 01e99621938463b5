"""The dynamics record's format: its tables and columns (`SCHEMA`), the check every read and write
makes against it, and the FORMAT each part is written in, so the format can grow (a table or a
column added later leaves what was recorded before readable). docs/record.md's table is rendered
from it (`schema_markdown`); premem.record writes and reads records in it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from premem.errors import PremError


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # str | int | number (int or float, NaN allowed) | bool
    meaning: str
    required: bool = True
    since: int = 1  # the FORMAT that added it: parts written before it need not hold it


# The key of every per-checkpoint table: which run, and which of its checkpoints.
AT_CHECKPOINT = (
    Column("run", "str", "run name"),
    Column("step", "int", "optimiser step of the checkpoint"),
    Column("epoch", "number", "epoch of the checkpoint"),
)
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
        *AT_CHECKPOINT,
        Column("split", "str", "`train` or `test`"),
        Column("example_id", "str", "example id (the data's own, else its line or index)"),
        Column("sample_idx", "int", "which of the k samples"),
        Column("correct", "bool", "right by the task's answer checker (math-verify, gold first, by default)"),
        Column("correct_strict", "bool", "right by exact match of the normalised answer (`#### N`)"),
        Column("parse_ok", "bool", "an answer could be extracted"),
        Column("answer", "str", "the extracted answer (null: none)"),
    ),
    "perplexity": (
        *AT_CHECKPOINT,
        Column("example_id", "str", "example id"),
        Column("trained", "bool", "a training example (false: held out, for tau calibration)"),
        Column("nll", "number", "NLL of the gold target, summed over its tokens"),
        Column("n_tokens", "int", "target tokens (eos included)"),
        Column("perplexity", "number", "exp(nll / n_tokens)"),
    ),
    "checkpoints": (
        *AT_CHECKPOINT,
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


FORMAT_KEY = b"premem_format"


def part_format(schema) -> int:
    """The FORMAT a part (its pyarrow schema) was written in: 1 for parts from before it was kept."""
    return int((schema.metadata or {}).get(FORMAT_KEY, b"1"))


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
                        "premem.record_schema.SCHEMA)")
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


def schema_markdown() -> str:
    """docs/record.md's table of the record format, from SCHEMA."""
    lines = ["| table | column | kind | meaning |", "|---|---|---|---|"]
    for table, columns in SCHEMA.items():
        for i, c in enumerate(columns):
            optional = "" if c.required else " (optional)"
            lines.append(f"| {f'`{table}.parquet`' if i == 0 else ''} | `{c.name}` | {c.kind} | {c.meaning}{optional} |")
    return "\n".join(lines) + "\n"
