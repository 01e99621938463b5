"""arith: procedural multi-step arithmetic word problems, small enough for a CPU model trained from
scratch; splits "pretrain", "train", "test" (a hash of the question decides)."""
from __future__ import annotations

import random

from premem.errors import PremError
from premem.grading import MARKER
from premem.tasks.base import PROCEDURAL_BUCKETS, Example, Task, _collect, _digest

NAMES = (("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"),
         ("Max", "he"), ("Zoe", "she"), ("Leo", "he"), ("Emma", "she"), ("Omar", "he"), ("Nina", "she"))


OBJECTS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "cards", "shells", "stamps",
           "cookies", "balloons", "beads")


OPENINGS = ("{name} has {v} {obj}.", "{name} starts with {v} {obj}.", "There are {v} {obj} in {name}'s box.",
            "{name} collects {v} {obj}.")


QUESTIONS = ("How many {obj} does {name} have?", "How many {obj} does {name} have now?",
             "How many {obj} does {name} end up with?", "What is the number of {obj} {name} has at the end?")


# {P}/{p}: subject pronoun, {him}: object pronoun, {his}: possessive.
STEPS = {
    "add": ("{P} buys {k} more.", "{P} finds {k} more {obj}.", "A friend gives {him} {k} {obj}.",
            "Then {name} gets {k} more.", "{P} picks up another {k} {obj}."),
    "sub": ("{P} gives away {k}.", "{P} loses {k} of them.", "{P} sells {k} {obj}.",
            "Then {name} gives {k} {obj} to a friend.", "{k} of the {obj} get lost."),
    "mul": ("{P} ends up with {k} times as many {obj}.", "Then the number of {obj} grows {k} times.",
            "{name} multiplies {his} {obj} by {k}."),
    "div": ("{P} splits {his} {obj} into {k} equal groups and keeps one group.", "{P} keeps 1/{k} of {his} {obj}.",
            "Then {name} shares them equally among {k} people and keeps one share."),
}


SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


# The trace's wording is drawn per example too, independent of the question: a model that generalises
# cannot predict it, so its per-token perplexity on targets stays above 1 while a memoriser's falls.
TRACE_OPENINGS = ("{name} starts with {v}.", "At first {name} has {v}.", "In the beginning there are {v}.",
                  "We start from {v}.")


TRACE_STEPS = ("{eq}.", "Then {eq}.", "Next, {eq}.", "Now {eq}.", "After that {eq}.", "So {eq}.")


TRACE_ENDINGS = ("", " {name} has {v} {obj} in the end.", " The answer is {v}.")


def _arith_template(rng: random.Random, n_steps: int, step_phrasings: int | None = None) -> str:
    """A template: opening, one (kind, phrasing) per step and a question, e.g. "o1-add2-sub0-q3".
    step_phrasings: only the first this many phrasings of each step kind (None: all of them)."""
    steps = []
    for _ in range(n_steps):
        kind = rng.choice(list(STEPS))
        n_phrasings = len(STEPS[kind]) if step_phrasings is None else min(step_phrasings, len(STEPS[kind]))
        steps.append(f"{kind}{rng.randrange(n_phrasings)}")
    return "-".join([f"o{rng.randrange(len(OPENINGS))}", *steps, f"q{rng.randrange(len(QUESTIONS))}"])


def _draw_numbers(rng: random.Random, kinds: list[str], max_value: int) -> tuple[int, list[int], list[int]]:
    """Start value and operands: values stay integers in [1, 2 * max_value], divisions are exact."""
    cap = 2 * max_value
    for _ in range(1000):
        v = start = rng.randint(1, max_value)
        ks, values = [], []
        for kind in kinds:
            if kind == "add":
                options = range(1, min(max_value, cap - v) + 1)
            elif kind == "sub":
                options = range(1, v)
            elif kind == "mul":
                options = [k for k in (2, 3, 4) if v * k <= cap]
            else:
                options = [k for k in (2, 3, 4, 5) if v % k == 0]
            if not options:
                break
            k = rng.choice(options)
            v = {"add": v + k, "sub": v - k, "mul": v * k, "div": v // k}[kind]
            ks.append(k)
            values.append(v)
        else:
            return start, ks, values
    raise PremError(f"arith: no numbers fit the steps {kinds} with max_value={max_value}")


def arith_steps(template: str) -> list[tuple[str, int]]:
    """(kind, phrasing index) of each step of an arith template: "o1-add2-sub0-q3" -> [("add", 2), ("sub", 0)]."""
    return [(s[:3], int(s[3:])) for s in template.split("-")[1:-1]]


def _arith_example(rng: random.Random, template: str, max_value: int, split: str) -> Example:
    parts = template.split("-")
    opening, steps, question = int(parts[0][1:]), arith_steps(template), int(parts[-1][1:])
    kinds = [kind for kind, _ in steps]
    start, ks, values = _draw_numbers(rng, kinds, max_value)
    name, pron = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    words = dict(name=name, obj=obj, P=pron.capitalize(), him="him" if pron == "he" else "her",
                 his="his" if pron == "he" else "her")
    sentences = [OPENINGS[opening].format(v=start, **words)]
    trace = [rng.choice(TRACE_OPENINGS).format(v=start, **words)]
    prev = start
    for (kind, phrasing), k, v in zip(steps, ks, values):
        sentences.append(STEPS[kind][phrasing].format(k=k, **words))
        trace.append(rng.choice(TRACE_STEPS).format(eq=f"{prev} {SYMBOL[kind]} {k} = {v}"))
        prev = v
    sentences.append(QUESTIONS[question].format(**words))
    answer = str(values[-1])
    text = " ".join(sentences)
    ending = rng.choice(TRACE_ENDINGS).format(v=answer, **words)
    meta = dict(task="arith", split=split, template=template, n_steps=len(steps), ops=kinds, name=name,
                obj=obj, start=start, operands=ks, values=values, max_value=max_value)
    solution = " ".join(trace) + f"{ending} {MARKER} {answer}"
    return Example(f"arith-{_digest(text)[:12]}", text, solution, answer, meta)


def _arith(split: str, n: int, seed: int, min_steps: int = 2, max_steps: int = 4, max_value: int = 40,
           step_phrasings: int | None = None):
    if not 1 <= min_steps <= max_steps:
        raise PremError(f"arith: need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    if step_phrasings is not None and (not isinstance(step_phrasings, int) or step_phrasings < 1):
        raise PremError(f"arith: step_phrasings must be an integer >= 1 or None, got {step_phrasings!r}")
    if max_value < 2:
        raise PremError(f"arith: max_value must be at least 2, got {max_value}")
    rng = random.Random(f"arith|{seed}|{split}")

    def draw():
        for _ in range(100):
            template = _arith_template(rng, rng.randint(min_steps, max_steps), step_phrasings)
            try:
                return _arith_example(rng, template, max_value, split)
            except PremError:  # some step sequences admit no numbers (e.g. many divisions by small values)
                continue
        raise PremError(f"arith: no feasible step sequences with max_value={max_value}, steps {min_steps}-{max_steps}")

    return _collect(draw, n, split, "arith")


def _variant(ex: Example, rng: random.Random, seed: int | None) -> Example:
    """Another problem of ex's template, drawn from rng (seed unused: arith draws everything from rng)."""
    return _arith_example(rng, ex.meta["template"], ex.meta["max_value"], ex.meta["split"])


TASK = Task(load=_arith, splits=tuple(PROCEDURAL_BUCKETS), variant=_variant, premem_made=True)
