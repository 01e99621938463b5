"""What every task shares: the Example, prompt and target formatting, the paper's forced-prefix
perturbations, hash-bucket splits, and `Task`, the one entry a task adds to the registry."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from premem.errors import PremError

PROMPT_TEMPLATE = "{question}\nAnswer:"


TARGET_TEMPLATE = " {solution}\nDone."


STOP = "\nDone."


# Claim 3 of the paper: forcing the start of the answer changes accuracy on examples that were
# only memorised. The prompt ends with "Answer:", the forced text follows after a space.
PREFIX_PERTURBATIONS = {"first": "First", "we_know_that": "We know that"}


# Hash buckets (of 100) that decide which split a generated question belongs to.
PROCEDURAL_BUCKETS = {"test": range(0, 20), "train": range(20, 50), "pretrain": range(50, 100)}


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    solution: str  # chain-of-thought trace ending in "#### <answer>"
    answer: str  # normalised final answer
    meta: dict = field(default_factory=dict, hash=False)


def format_prompt(ex_or_question: Example | str, template: str = PROMPT_TEMPLATE) -> str:
    question = ex_or_question.question if isinstance(ex_or_question, Example) else ex_or_question
    return template.format(question=question)


def format_target(ex: Example, template: str = TARGET_TEMPLATE) -> str:
    return template.format(solution=ex.solution)


def perturb_prompt(prompt: str, prefix: str) -> str:
    """Force the answer to start with a phrase: a key of PREFIX_PERTURBATIONS or the phrase itself."""
    text = PREFIX_PERTURBATIONS.get(prefix, prefix)
    if not text.strip():
        raise PremError(f"perturb_prompt: empty prefix {prefix!r}; known: {sorted(PREFIX_PERTURBATIONS)}")
    return f"{prompt} {text.strip()}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _bucket(question: str) -> int:
    return int(_digest(question)[:8], 16) % 100


def _in_split(question: str, split: str) -> bool:
    return _bucket(question) in PROCEDURAL_BUCKETS[split]


def _seed_int(*parts) -> int:
    return int(_digest("|".join(map(str, parts)))[:8], 16)


def _collect(draw: Callable[[], Example], n: int, split: str, task: str, exclude=()) -> list[Example]:
    """Draw until n distinct questions hash into `split`; fail clearly if the generator runs dry."""
    out, seen = [], set(exclude)
    misses = 0
    while len(out) < n:
        ex = draw()
        if ex.question in seen or not _in_split(ex.question, split):
            misses += 1
            if misses > 50 * n + 1000:
                raise PremError(f"{task}: found only {len(out)} distinct '{split}' questions of {n} asked; "
                                "ask for fewer or allow more variety (steps, max_value)")
            continue
        seen.add(ex.question)
        out.append(ex)
    return out


def _select(rows: list, n: int, seed: int, split: str, task: str) -> list:
    if n > len(rows):
        raise PremError(f"{task}: asked for n={n} '{split}' examples but only {len(rows)} are available")
    order = np.random.default_rng([seed, _seed_int(split)]).permutation(len(rows))[:n]
    return [(int(i), rows[i]) for i in order]


@dataclass(frozen=True)
class Task:
    """A task, whole: one of these in one module, named in premem.tasks.TASKS, is all a new task adds."""
    load: Callable[..., list[Example]]  # (split, n, seed, **options): its keyword options are the task's options
    splits: tuple[str, ...] | None = None  # the splits it knows (None: whatever its files or the hub hold)
    # (ex, rng, seed) -> a new problem of ex's template from ex's split, with its own gold answer: a task
    # that has one gets perturbed problems (claim 3) and similar examples (claim 4's curation).
    variant: Callable[..., Example] | None = None
    checker: Callable[[dict], str] = lambda options: "marker"  # its answer checker, from its task_options
    # Its examples come from premem's code and the options alone (no file, library or hub): the same
    # code and options give the same examples, so what was built from them can be found by recipe.
    premem_made: bool = False
