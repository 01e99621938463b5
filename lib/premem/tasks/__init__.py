"""Reasoning tasks as lists of `Example`, prompt/target formatting, and the paper's perturbations.

Tasks (`load_task(name, split, n, seed, **options)`), a module each, one `Task` entry each in TASKS:
- "arith" (premem.tasks.arith): procedural multi-step arithmetic word problems, small enough for a
  CPU model trained from scratch; splits "pretrain", "train", "test".
- "gsm_symbolic" (.gsm_symbolic): GSM8k-style templates from reasoning_gym; the same splits.
- "gsm8k", "math" (.hub): the hub datasets at a pinned revision, or local JSON/JSONL/parquet/CSV files.
- "jsonl" (.jsonl): a user's own data, one JSON object per line, fields named by task_options
  (question, solution, answer, id) and judged by the `checker` option (premem.grading.CHECKERS).

Splits never share a question: procedural tasks assign each generated question to a split by a hash
of its text (so disjointness holds across seeds too), and a single local file set is split the same
way. For a given seed, the first n examples of a larger n are the smaller set.

A task's data library (reasoning_gym, Hugging Face datasets) is imported when that task loads, not
with the package: a run of arith never pays for them.
"""
from __future__ import annotations

import inspect
import random
from dataclasses import replace

import numpy as np

from premem.errors import PremError
from premem.grading import MARKER  # noqa: F401 (tasks.MARKER: how premem's solutions end)
from premem.tasks import arith, gsm_symbolic, hub, jsonl
from premem.tasks.arith import TRACE_OPENINGS, arith_steps  # noqa: F401
from premem.tasks.base import (PREFIX_PERTURBATIONS, PROMPT_TEMPLATE, STOP, TARGET_TEMPLATE, Example,  # noqa: F401
                               Task, _collect, _seed_int, format_prompt, format_target, perturb_prompt)
from premem.tasks.hub import GSM8K_REVISION, MATH_REVISION, MATH_SUBJECTS  # noqa: F401
from premem.tasks.jsonl import JSONL_OPTIONS, read_jsonl  # noqa: F401

# The registry: a new task is a module with a Task, and its name here.
TASKS: dict[str, Task] = {"arith": arith.TASK, "gsm_symbolic": gsm_symbolic.TASK, "gsm8k": hub.GSM8K,
                          "math": hub.MATH, "jsonl": jsonl.TASK}


def load_task(name: str, split: str, n: int, seed: int = 0, **options) -> list[Example]:
    """n examples of task `name` from `split`; options are the task's keywords (e.g. max_steps, data_files)."""
    if name not in TASKS:
        raise PremError(f"unknown task '{name}'; known: {sorted(TASKS)}")
    task = TASKS[name]
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise PremError(f"task '{name}': n must be a positive integer, got {n!r}")
    if task.splits is not None and split not in task.splits:
        raise PremError(f"task '{name}': unknown split '{split}'; known: {list(task.splits)}")
    allowed = list(inspect.signature(task.load).parameters)[3:]
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise PremError(f"task '{name}': unknown options {bad}; known: {allowed}")
    return task.load(split, int(n), seed, **options)


def answer_checker(cfg) -> str:
    """How the params' task judges an answer (premem.grading.CHECKERS): its Task's checker of the
    task_options ("marker" for premem's own tasks, whose solutions end in "#### <answer>")."""
    return TASKS[cfg.task].checker(cfg.task_options) if cfg.task in TASKS else "marker"


def has_variants(name: str) -> bool:
    """Whether task `name` makes new problems of a template (perturbed problems, similar examples)."""
    return name in TASKS and TASKS[name].variant is not None


def _variant_task(ex: Example, what: str) -> Task:
    name = ex.meta.get("task")
    if not has_variants(name):
        known = sorted(t for t in TASKS if has_variants(t))
        raise PremError(f"{what}: supported for {known} only, not for task '{name}' (example {ex.id})")
    return TASKS[name]


def perturb_problem(ex: Example, seed: int) -> Example:
    """The same template with new numbers and names; the gold answer is recomputed."""
    task = _variant_task(ex, "perturb_problem")
    rng = random.Random(f"perturb|{ex.id}|{seed}")
    for attempt in range(100):
        new = task.variant(ex, rng, _seed_int(ex.id, seed, attempt))
        if new.question != ex.question:
            return replace(new, meta=dict(new.meta, perturbed_from=ex.id))
    raise PremError(f"perturb_problem: template {ex.meta['template']} gave only the original question")


def similar_examples(ex: Example, n: int, seed: int) -> list[Example]:
    """n fresh problems of ex's template (so also its n_steps), all from ex's own split (no test leakage)."""
    task = _variant_task(ex, "similar_examples")
    rng = random.Random(f"similar|{ex.id}|{seed}")
    split = ex.meta["split"]
    found = _collect(lambda: task.variant(ex, rng, None), n, split, ex.meta["task"], {ex.question})
    return [replace(e, meta=dict(e.meta, similar_to=ex.id)) for e in found]
