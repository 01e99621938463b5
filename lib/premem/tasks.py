"""Reasoning tasks as lists of `Example`, prompt/target formatting, and the paper's perturbations.

Tasks (`load_task(name, split, n, seed, **options)`):
- "arith": procedural multi-step arithmetic word problems, small enough for a CPU model trained from
  scratch; splits "pretrain", "train", "test".
- "gsm_symbolic": GSM8k-style templates from reasoning_gym; splits "pretrain", "train", "test".
- "gsm8k", "math": the hub datasets at a pinned revision, or local JSON/JSONL/parquet/CSV files.
- "jsonl": a user's own data, one JSON object per line, fields named by task_options (question,
  solution, answer, id) and judged by the `checker` option (premem.grading.CHECKERS).

Splits never share a question: procedural tasks assign each generated question to a split by a hash
of its text (so disjointness holds across seeds too), and a single local file set is split the same
way. For a given seed, the first n examples of a larger n are the smaller set.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from premem.errors import PremError
from premem.grading import MARKER, extract_answer, extract_boxed, normalize_answer

PROMPT_TEMPLATE = "{question}\nAnswer:"
TARGET_TEMPLATE = " {solution}\nDone."
STOP = "\nDone."
# Claim 3 of the paper: forcing the start of the answer changes accuracy on examples that were
# only memorised. The prompt ends with "Answer:", the forced text follows after a space.
PREFIX_PERTURBATIONS = {"first": "First", "we_know_that": "We know that"}

GSM8K_REVISION = "740312add88f781978c0658806c59bc2815b9866"  # openai/gsm8k, config "main"
MATH_REVISION = "21a5633873b6a120296cce3e2df9d5550074f4a3"  # EleutherAI/hendrycks_math
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
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


# ---------------------------------------------------------------- arith
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


# ---------------------------------------------------------------- gsm_symbolic
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


# ---------------------------------------------------------------- gsm8k and MATH
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


def _select(rows: list, n: int, seed: int, split: str, task: str) -> list:
    if n > len(rows):
        raise PremError(f"{task}: asked for n={n} '{split}' examples but only {len(rows)} are available")
    order = np.random.default_rng([seed, _seed_int(split)]).permutation(len(rows))[:n]
    return [(int(i), rows[i]) for i in order]


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


# ---------------------------------------------------------------- jsonl: a user's own data
# The jsonl task's options: the user's column names, and how answers are judged.
JSONL_OPTIONS = ("question", "solution", "answer", "id", "checker")


def read_jsonl(path, split: str, question: str = "question", solution: str = "solution", answer: str = "answer",
               id: str | None = None, checker: str = "marker") -> list[Example]:
    """Every row of a JSON Lines file, in file order, as an Example. Field names are the user's
    (`id` None: the line number); a row without `answer` takes the gold answer the checker reads
    off its solution. A bad row is an error naming file:line and the field."""
    from premem.grading import ANSWER_IN_SOLUTION, check_checker

    path = Path(path)
    for key, value in dict(question=question, solution=solution, answer=answer, id=id, checker=checker).items():
        if not isinstance(value, str) and not (key == "id" and value is None):
            raise PremError(f"task_options: '{key}' names a field of your rows and is text, got "
                            f"{type(value).__name__} {value!r}"[:160])
    if not path.is_file():
        raise PremError(f"data file not found: {path}")
    check_checker(checker)
    out, lines = [], {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PremError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise PremError(f"{where}: expected a JSON object, got {type(row).__name__}")

        def text(key, role):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                got = "missing" if key not in row else f"{type(value).__name__} {value!r}"[:60]
                raise PremError(f"{where}: field '{key}' (the {role}) must be a non-empty string, got {got}")
            return value

        q, sol = text(question, "question"), text(solution, "solution")
        if answer in row and row[answer] is not None and str(row[answer]).strip():
            gold = str(row[answer]).strip()
        elif checker in ANSWER_IN_SOLUTION and (found := ANSWER_IN_SOLUTION[checker](sol)) is not None:
            gold = found
        else:
            raise PremError(f"{where}: no field '{answer}' (the answer), and the '{checker}' checker finds no "
                            "answer in the solution")
        if id is not None and (id not in row or row[id] is None):
            raise PremError(f"{where}: field '{id}' (the id) is missing")
        ex_id = str(row[id]) if id is not None else f"{split}-{line_no}"
        if ex_id in lines:
            raise PremError(f"{where}: id {ex_id!r} already used on line {lines[ex_id]}")
        lines[ex_id] = line_no
        out.append(Example(ex_id, q, sol, gold if checker == "exact" else normalize_answer(gold),
                           dict(task="jsonl", split=split, file=str(path), line=line_no)))
    if not out:
        raise PremError(f"{path}: no rows")
    return out


def _jsonl(split: str, n: int, seed: int, data_files=None, question: str = "question", solution: str = "solution",
           answer: str = "answer", id: str | None = None, checker: str = "marker"):
    if not isinstance(data_files, dict) or split not in data_files:
        raise PremError(f"jsonl: data_files needs a '{split}' entry (a .jsonl file), got {data_files!r}")
    rows = read_jsonl(data_files[split], split, question, solution, answer, id, checker)
    return [ex for _, ex in _select(rows, n, seed, split, "jsonl")]


def answer_checker(cfg) -> str:
    """How the params' task judges an answer (premem.grading.CHECKERS): the jsonl task's `checker`
    option, else "marker" (premem writes every other task's solutions to end in "#### <answer>")."""
    return cfg.task_options.get("checker", "marker") if cfg.task == "jsonl" else "marker"


# ---------------------------------------------------------------- registry and perturbations
TASKS: dict[str, Callable[..., list[Example]]] = {"arith": _arith, "gsm_symbolic": _gsm_symbolic,
                                                  "gsm8k": _gsm8k, "math": _math, "jsonl": _jsonl}
SPLITS = {"arith": tuple(PROCEDURAL_BUCKETS), "gsm_symbolic": tuple(PROCEDURAL_BUCKETS)}


def load_task(name: str, split: str, n: int, seed: int = 0, **options) -> list[Example]:
    """n examples of task `name` from `split`; options are the task's keywords (e.g. max_steps, data_files)."""
    if name not in TASKS:
        raise PremError(f"unknown task '{name}'; known: {sorted(TASKS)}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise PremError(f"task '{name}': n must be a positive integer, got {n!r}")
    if name in SPLITS and split not in SPLITS[name]:
        raise PremError(f"task '{name}': unknown split '{split}'; known: {list(SPLITS[name])}")
    allowed = list(inspect.signature(TASKS[name]).parameters)[3:]
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise PremError(f"task '{name}': unknown options {bad}; known: {allowed}")
    return TASKS[name](split, int(n), seed, **options)


def _check_procedural(ex: Example, what: str) -> str:
    task = ex.meta.get("task")
    if task not in SPLITS:
        raise PremError(f"{what}: supported for {sorted(SPLITS)} only, not for task '{task}' (example {ex.id})")
    return task


def perturb_problem(ex: Example, seed: int) -> Example:
    """The same template with new numbers and names; the gold answer is recomputed."""
    task = _check_procedural(ex, "perturb_problem")
    rng = random.Random(f"perturb|{ex.id}|{seed}")
    for attempt in range(100):
        if task == "arith":
            new = _arith_example(rng, ex.meta["template"], ex.meta["max_value"], ex.meta["split"])
        else:
            new = _gsm_symbolic_generate(ex.meta["template"], _seed_int(ex.id, seed, attempt),
                                         ex.meta.get("difficulty") or 1.0, ex.meta["split"])
        if new.question != ex.question:
            return replace(new, meta=dict(new.meta, perturbed_from=ex.id))
    raise PremError(f"perturb_problem: template {ex.meta['template']} gave only the original question")


def similar_examples(ex: Example, n: int, seed: int) -> list[Example]:
    """n fresh problems of ex's template (so also its n_steps), all from ex's own split (no test leakage)."""
    task = _check_procedural(ex, "similar_examples")
    rng = random.Random(f"similar|{ex.id}|{seed}")
    split = ex.meta["split"]
    if task == "arith":
        def draw():
            return _arith_example(rng, ex.meta["template"], ex.meta["max_value"], split)
    else:
        def draw():
            return _gsm_symbolic_generate(ex.meta["template"], rng.randrange(2**31),
                                          ex.meta.get("difficulty") or 1.0, split)
    return [replace(e, meta=dict(e.meta, similar_to=ex.id)) for e in _collect(draw, n, split, task, {ex.question})]
