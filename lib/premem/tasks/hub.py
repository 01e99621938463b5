"""gsm8k and math: the Hugging Face datasets at a pinned revision, or local JSON/JSONL/parquet/CSV
files holding the hub's columns (one file set for every split: a hash of the question decides)."""
from __future__ import annotations

import re
from pathlib import Path

from premem.errors import PremError
from premem.grading import MARKER, extract_answer, extract_boxed, normalize_answer
from premem.tasks.base import Example, Task, _bucket, _digest, _select

GSM8K_REVISION = "740312add88f781978c0658806c59bc2815b9866"  # openai/gsm8k, config "main"


MATH_REVISION = "21a5633873b6a120296cce3e2df9d5550074f4a3"  # EleutherAI/hendrycks_math


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


def _read_local(files, cache_dir) -> list[dict]:
    import datasets

    paths = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    for p in paths:
        if not p.is_file():
            raise PremError(f"data file not found: {p}")
        if p.suffix not in builders:
            raise PremError(f"data file {p}: unknown format; use one of {sorted(builders)}")
    kinds = {builders[p.suffix] for p in paths}
    if len(kinds) != 1:
        raise PremError(f"data files mix formats: {[str(p) for p in paths]}")
    ds = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in paths], split="train", cache_dir=cache_dir)
    return [dict(r) for r in ds]


def _rows(task, hub_id, configs, revision, split, columns, data_files, cache_dir, test_fraction) -> list[dict]:
    """The rows of a split: the hub dataset's, or the local files' (`columns`: the question's first)."""
    if data_files is None:
        import datasets

        if split not in ("train", "test"):
            raise PremError(f"{task}: unknown split '{split}'; known: ['test', 'train']")
        try:
            return [dict(r) for c in configs
                    for r in datasets.load_dataset(hub_id, c, revision=revision, split=split, cache_dir=cache_dir)]
        except OSError as e:  # no network or no such revision: say how to run on local files instead
            raise PremError(f"{task}: cannot load {hub_id}@{revision[:8]} ({e}); "
                            "pass data_files={'train': ..., 'test': ...} to use local files") from e
    if isinstance(data_files, dict):
        if split not in data_files:
            raise PremError(f"{task}: data_files has no '{split}' entry; it has {sorted(data_files)}")
        return _columns(_read_local(data_files[split], cache_dir), task, data_files[split], columns)
    # One file set for every split: the hash of the question decides, as for generated tasks.
    if split not in ("train", "test"):
        raise PremError(f"{task}: unknown split '{split}'; known: ['test', 'train']")
    rows = _columns(_read_local(data_files, cache_dir), task, data_files, columns)
    return [r for r in rows if (_bucket(r[columns[0]]) < 100 * test_fraction) == (split == "test")]


def _columns(rows: list[dict], task: str, files, columns: tuple[str, ...]) -> list[dict]:
    """Local files hold the hub dataset's columns, as text: else one error naming the file."""
    for i, row in enumerate(rows):
        missing = [c for c in columns if not isinstance(row.get(c), str)]
        if missing:
            raise PremError(f"{task}: {files}: row {i} has no text column {missing[0]!r} (columns {sorted(row)}); "
                            f"{task} files hold {', '.join(columns)}")
    return rows


def _gsm8k(split: str, n: int, seed: int, data_files=None, cache_dir=None, test_fraction: float = 0.2,
           strip_annotations: bool = False):
    rows = _rows("gsm8k", "openai/gsm8k", ["main"], GSM8K_REVISION, split, ("question", "answer"), data_files,
                 cache_dir, test_fraction)
    out = []
    for i, row in _select(rows, n, seed, split, "gsm8k"):
        answer = extract_answer(row["answer"])
        if answer is None:
            raise PremError(f"gsm8k: row {i} of '{split}' has no '####' in its answer")
        cot = row["answer"][: row["answer"].find(MARKER)].rstrip()
        if strip_annotations:  # calculator annotations such as <<48/2=24>>
            cot = re.sub(r"<<[^>]*>>", "", cot)
        out.append(Example(f"gsm8k-{split}-{i}", row["question"], f"{cot}\n{MARKER} {answer}", answer,
                           dict(task="gsm8k", split=split, row=i)))
    return out


def _math(split: str, n: int, seed: int, data_files=None, cache_dir=None, test_fraction: float = 0.2,
          subjects=None, levels=None):
    unknown = set(subjects or ()) - set(MATH_SUBJECTS)
    if unknown:
        raise PremError(f"math: unknown subjects {sorted(unknown)}; known: {list(MATH_SUBJECTS)}")
    rows = _rows("math", "EleutherAI/hendrycks_math", subjects or MATH_SUBJECTS, MATH_REVISION, split,
                 ("problem", "solution"), data_files, cache_dir, test_fraction)
    kept = []
    for row in rows:
        m = re.search(r"\d+", str(row.get("level", "")))  # "Level 3"; a few rows say "Level ?"
        level = int(m.group()) if m else None
        answer = extract_boxed(row["solution"])
        if answer is None or (levels and level not in levels):
            continue  # no boxed answer: cannot be graded
        kept.append(dict(row, level=level, answer=normalize_answer(answer)))
    out = []
    for i, row in _select(kept, n, seed, split, "math"):
        out.append(Example(f"math-{split}-{_digest(row['problem'])[:12]}", row["problem"],
                           f"{row['solution'].rstrip()}\n{MARKER} {row['answer']}", row["answer"],
                           dict(task="math", split=split, level=row["level"], subject=row.get("type"))))
    return out


GSM8K = Task(load=_gsm8k)
MATH = Task(load=_math)
