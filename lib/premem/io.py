"""Atomic writes: a killed run leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from premem.errors import PremError

# atomic_target's temporaries: .<stem>.<32 hex digits><suffix>, beside their target.
_TEMPORARY = re.compile(r"\.(.*)\.[0-9a-f]{32}(\.[^.]*)?")


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success rename it onto `path`, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600) and would stay so after the rename; created
    # with 0o666, the umask gives the temporary the mode of any file written here.
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex}{path.suffix}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a new temporary folder beside `path`; on success rename it onto `path` (absent, or an
    empty folder), else remove it: the folder is complete or absent, whoever stops the writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_temporary(path: str | os.PathLike) -> bool:
    """A temporary of atomic_target's (a writer killed by SIGKILL leaves one behind)."""
    return Path(path).is_file() and _TEMPORARY.fullmatch(Path(path).name) is not None


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries writers killed mid-write left under `folder`; call it only while
    holding the folder's lock (a live writer's temporary is then not there). Returns them."""
    found = [p for p in Path(folder).rglob(".*") if is_temporary(p)]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike, df) -> Path:
    with atomic_target(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")


def check_table_suffix(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        from premem.errors import PremError

        raise PremError(f"{path}: a table is written as {', '.join(TABLE_SUFFIXES)}; got '{path.suffix or 'no suffix'}'")
    return path


def write_table(path: str | os.PathLike, df) -> Path:
    """A tidy table as parquet, CSV or JSON Lines, by the path's suffix, atomically."""
    path = check_table_suffix(path)
    if path.suffix == ".parquet":
        return write_parquet(path, df)
    with atomic_target(path) as tmp:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True)
    return path


def save_result(cfg, notebook: str, table_name: str, df) -> Path:
    """A notebook's tidy table as <out_dir>/results/<notebook>/<params name>/<table>.parquet, with the
    config that produced it beside it."""
    folder = cfg.path("out_dir") / "results" / notebook / cfg.name
    write_json(folder / "config.json", dict(hash=cfg.hash(), params=cfg.model_dump(mode="json")))
    return write_parquet(folder / f"{table_name}.parquet", df)


def read_json(f: Path) -> dict:
    try:
        data = json.loads(Path(f).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise PremError(f"{f}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise PremError(f"{f}: not valid JSON ({e.msg} at line {e.lineno}); the file is damaged") from None
    if not isinstance(data, dict):
        raise PremError(f"{f}: expected a JSON object, got {type(data).__name__}")
    return data
