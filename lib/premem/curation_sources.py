"""Where curation's new examples come from: for each selected original, examples like it. A new
source is one class with `similar` and `capacity`; premem.curation.source_for picks one per params."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Protocol

from premem import tasks
from premem.config import Params
from premem.errors import PremError
from premem.grading import extract_answer
from premem.tasks import Example


class Source(Protocol):
    """Where similar examples come from: `similar(ex, n, seed)` gives n examples like `ex`, the first
    n of one deterministic stream per (ex, seed); `capacity(ex)` how many exist (None: unlimited)."""

    def similar(self, ex: Example, n: int, seed: int) -> list[Example]: ...

    def capacity(self, ex: Example) -> int | None: ...


class ProceduralSource:
    """arith and gsm_symbolic: same template and steps, fresh numbers and names (tasks.similar_examples)."""

    def similar(self, ex, n, seed):
        return tasks.similar_examples(ex, n, seed) if n > 0 else []

    def capacity(self, ex):
        return None


class PoolSource:
    """Variants written by someone else (GSM8k, MATH): a JSONL file of {source_id, question, solution},
    source_id being the premem id of the original (e.g. "gsm8k-train-17"), the solution ending in
    "#### <answer>"."""

    def __init__(self, path: str | Path, task: str = "pool"):
        self.path, self.variants = Path(path), {}
        if not self.path.is_file():
            raise PremError(f"pool_file not found: {self.path}")
        for line_no, line in enumerate(self.path.read_text().splitlines(), start=1):
            where = f"{self.path}:{line_no}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PremError(f"{where}: not valid JSON ({e.msg})") from None
            bad = [k for k in ("source_id", "question", "solution")
                   if not isinstance(row, dict) or not isinstance(row.get(k), str) or not row[k].strip()]
            if bad:
                raise PremError(f"{where}: needs non-empty string fields {bad}")
            if (answer := extract_answer(row["solution"])) is None:
                raise PremError(f"{where}: solution has no '#### <answer>' line")
            q, sid = row["question"], row["source_id"]
            self.variants.setdefault(sid, []).append(Example(
                f"{task}-var-{hashlib.sha256(q.encode()).hexdigest()[:12]}", q, row["solution"], answer,
                dict(task=task, split="train", similar_to=sid, pool_line=line_no)))

    def similar(self, ex, n, seed):
        pool = self.variants.get(ex.id, [])
        if n > len(pool):
            raise PremError(f"{self.path}: {len(pool)} variants of {ex.id}, asked for {n}")
        order = random.Random(f"pool|{ex.id}|{seed}").sample(range(len(pool)), len(pool))
        return [pool[i] for i in order[:n]]

    def capacity(self, ex):
        return len(self.variants.get(ex.id, []))


def source_for(cfg: Params) -> Source:
    if cfg.pool_file:
        return PoolSource(cfg.path("pool_file"), cfg.task)
    if tasks.has_variants(cfg.task):
        return ProceduralSource()
    raise PremError(f"task '{cfg.task}' has no procedural variants: set pool_file to a JSONL of "
                    "{source_id, question, solution} variants")
