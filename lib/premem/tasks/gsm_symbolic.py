"""gsm_symbolic: GSM8k-style templates from reasoning_gym, generated offline; splits "pretrain",
"train", "test" (a hash of the question decides)."""
from __future__ import annotations

import functools
import itertools
import json
import random
import re

from premem.errors import PremError
from premem.grading import MARKER, normalize_answer
from premem.tasks.base import PROCEDURAL_BUCKETS, Example, Task, _collect, _digest, _seed_int

_RG_SUFFIX = " Give the result as your final answer. Do not include units."


def _gsm_symbolic_example(entry: dict, template: int, split: str, source: dict) -> Example:
    # The question suffix is reasoning_gym's instruction to chat models; our prompt says "Answer:".
    question = entry["question"].removesuffix(_RG_SUFFIX)
    answer = normalize_answer(str(entry["answer"]))
    md = entry["metadata"]
    # reasoning_gym writes some final lines as "#### 36.0" for the answer "36": restate it normalised.
    cot = re.sub(r"\s*####[^\n]*\s*$", "", md.get("answer_cot") or "").rstrip()
    solution = f"{cot}\n{MARKER} {answer}" if cot else f"{MARKER} {answer}"
    meta = dict(task="gsm_symbolic", split=split, template=template, difficulty=md.get("difficulty"),
                # Fractions and the like become strings so meta stays JSON.
                variables=json.loads(json.dumps(md.get("variables", {}), default=str)), **source)
    return Example(f"gsm_symbolic-{_digest(question)[:12]}", question, solution, answer, meta)


def _gsm_symbolic(split: str, n: int, seed: int, difficulty: float = 1.0):
    import reasoning_gym

    size = max(64, 4 * n)  # about a third of generated questions hash into any one split

    def stream():
        for chunk in itertools.count():
            ds_seed = _seed_int("gsm_symbolic", seed, split, chunk)
            ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=ds_seed, difficulty=difficulty)
            for idx in range(size):
                yield _gsm_symbolic_example(ds[idx], ds.task_indices[idx], split,
                                            dict(source_seed=ds_seed, source_index=idx))

    return _collect(stream().__next__, n, split, "gsm_symbolic")


@functools.lru_cache(maxsize=1)
def _gsm_symbolic_generators() -> dict:
    import reasoning_gym

    # Internal API: the dataset's template id -> generator(rng, difficulty) map (reasoning_gym 0.1.19).
    return reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0).generators


def _gsm_symbolic_generate(template: int, seed: int, difficulty: float, split: str) -> Example:
    """One problem from a given reasoning_gym template, drawn with its own seed."""
    generators = _gsm_symbolic_generators()
    if template not in generators:
        raise PremError(f"gsm_symbolic: no generator for template {template}")
    entry = generators[template](random.Random(seed), difficulty)
    return _gsm_symbolic_example(entry, template, split, dict(gen_seed=seed))


def _variant(ex: Example, rng: random.Random, seed: int | None) -> Example:
    """Another problem of ex's template: reasoning_gym's generator at `seed`, or at one drawn from rng."""
    return _gsm_symbolic_generate(ex.meta["template"], rng.randrange(2**31) if seed is None else seed,
                                  ex.meta.get("difficulty") or 1.0, ex.meta["split"])


TASK = Task(load=_gsm_symbolic, splits=tuple(PROCEDURAL_BUCKETS), variant=_variant)
