"""Tasks: arithmetic of generated traces, determinism, split disjointness, perturbations, local loaders."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from premem import tasks
from premem.errors import PremError
from premem.grading import extract_answer, grade

EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def check_arith_trace(ex):
    """Re-evaluate every step from the trace text; return the chain of values."""
    eqs = EQ.findall(ex.solution)
    assert len(eqs) == ex.meta["n_steps"]
    prev = ex.meta["start"]
    assert str(prev) in ex.question
    for a, op, b, c in eqs:
        assert int(a) == prev  # each step continues from the previous result
        assert OPS[op](int(a), int(b)) == int(c)
        prev = int(c)
    assert ex.solution.endswith(f"#### {prev}")
    assert ex.answer == str(prev) == extract_answer(ex.solution)
    return prev


def test_format_prompt_and_target():
    ex = tasks.Example("x", "What is 2 + 2?", "2 + 2 = 4. #### 4", "4")
    assert tasks.format_prompt(ex) == "What is 2 + 2?\nAnswer:"
    assert tasks.format_prompt("Q?") == "Q?\nAnswer:"
    assert tasks.format_target(ex) == " 2 + 2 = 4. #### 4\nDone."
    assert tasks.format_target(ex).endswith(tasks.STOP)
    assert tasks.format_prompt(ex, "Q: {question}\nA:") == "Q: What is 2 + 2?\nA:"


def test_arith_traces_are_correct():
    exs = tasks.load_task("arith", "train", 300, seed=0)
    for ex in exs:
        value = check_arith_trace(ex)
        assert 0 < value <= 2 * 40
        assert 2 <= ex.meta["n_steps"] <= 4
        assert ex.question.isascii() and ex.solution.isascii()
        assert grade(tasks.format_target(ex), ex.answer).correct_strict
    assert len({ex.id for ex in exs}) == len(exs)


def test_arith_options():
    exs = tasks.load_task("arith", "test", 50, seed=3, min_steps=5, max_steps=5, max_value=10)
    assert {ex.meta["n_steps"] for ex in exs} == {5}
    assert all(max(ex.meta["values"]) <= 20 and check_arith_trace(ex) for ex in exs)
    # step_phrasings keeps the first phrasings of each step kind (a pretraining pool that leaves the
    # others for finetuning to teach); None, the default, keeps them all.
    few = tasks.load_task("arith", "pretrain", 300, seed=0, step_phrasings=2)
    used = {step for ex in few for step in tasks.arith_steps(ex.meta["template"])}
    assert {i for _, i in used} == {0, 1} and {kind for kind, _ in used} == {"add", "sub", "mul", "div"}
    assert all(check_arith_trace(ex) for ex in few)
    assert tasks.load_task("arith", "train", 20, seed=0, step_phrasings=None) == tasks.load_task("arith", "train", 20, seed=0)
    with pytest.raises(PremError, match="step_phrasings must be an integer >= 1"):
        tasks.load_task("arith", "train", 5, step_phrasings=0)


def test_arith_hand_example():
    # Template "o0-add0-sub0-q0": "{name} has {v} {obj}. {P} buys {k} more. {P} gives away {k}. How many..."
    import random
    ex = tasks.arith._arith_example(random.Random(0), "o0-add0-sub0-q0", 40, "train")
    start, (k1, k2) = ex.meta["start"], ex.meta["operands"]
    name, obj = ex.meta["name"], ex.meta["obj"]
    assert ex.question.startswith(f"{name} has {start} {obj}. ")
    assert f"buys {k1} more. " in ex.question and f"gives away {k2}. " in ex.question
    assert ex.question.endswith(f"How many {obj} does {name} have?")
    assert ex.answer == str(start + k1 - k2)


def test_determinism_and_nesting():
    a = tasks.load_task("arith", "train", 40, seed=7)
    b = tasks.load_task("arith", "train", 40, seed=7)
    c = tasks.load_task("arith", "train", 40, seed=8)
    assert a == b
    assert [e.question for e in a] != [e.question for e in c]
    assert tasks.load_task("arith", "train", 10, seed=7) == a[:10]


@pytest.mark.parametrize("name, splits", [("arith", ("train", "test", "pretrain")),
                                          ("gsm_symbolic", ("train", "test"))])
def test_splits_are_disjoint(name, splits):
    qs = {s: {e.question for e in tasks.load_task(name, s, 300, seed=0)} for s in splits}
    for s in splits:
        assert len(qs[s]) == 300  # no duplicates within a split either
    for i, s in enumerate(splits):
        for t in splits[i + 1:]:
            assert not qs[s] & qs[t], (s, t)
    # Disjoint across seeds too: the split is a function of the question text.
    other = {e.question for e in tasks.load_task(name, "train", 300, seed=1)}
    assert not other & qs["test"]


def test_phrasing_variety():
    exs = tasks.load_task("arith", "train", 200, seed=0)
    step_phrasings = {p for ex in exs for p in ex.meta["template"].split("-")[1:-1]}
    assert len(step_phrasings) >= 14  # of 16 (kind, phrasing) pairs
    # The question text itself varies, not just the ids: strip numbers, names and objects.
    shapes = set()
    for ex in exs:
        q = re.sub(r"\d+", "N", ex.question).replace(ex.meta["name"], "X").replace(ex.meta["obj"], "O")
        shapes.update(s for s in q.split(". ")[1:-1])
    assert len(shapes) >= 14
    # The trace wording varies independently of the question (keeps perplexity above 1).
    openings = {ex.solution.split(".")[0].replace(ex.meta["name"], "X").replace(str(ex.meta["start"]), "N")
                for ex in exs}
    assert len(openings) == len(tasks.arith.TRACE_OPENINGS)
    assert len({ex.meta["name"] for ex in exs}) >= 8 and len({ex.meta["obj"] for ex in exs}) >= 8


def test_perturb_problem_arith():
    exs = tasks.load_task("arith", "train", 30, seed=0)
    for ex in exs:
        p = tasks.perturb_problem(ex, seed=1)
        assert p.meta["template"] == ex.meta["template"] and p.meta["n_steps"] == ex.meta["n_steps"]
        assert p.question != ex.question and p.id != ex.id
        assert p.meta["perturbed_from"] == ex.id
        check_arith_trace(p)
    assert tasks.perturb_problem(exs[0], 1) == tasks.perturb_problem(exs[0], 1)
    assert tasks.perturb_problem(exs[0], 1).question != tasks.perturb_problem(exs[0], 2).question


def test_similar_examples_arith():
    ex = tasks.load_task("arith", "train", 1, seed=0)[0]
    sim = tasks.similar_examples(ex, 5, seed=0)
    assert len(sim) == 5 and len({s.question for s in sim} | {ex.question}) == 6
    for s in sim:
        assert s.meta["template"] == ex.meta["template"] and s.meta["n_steps"] == ex.meta["n_steps"]
        assert tasks.base._in_split(s.question, "train")  # curation data never lands on a test question
        check_arith_trace(s)


def test_gsm_symbolic():
    exs = tasks.load_task("gsm_symbolic", "train", 40, seed=0)
    assert len({ex.meta["template"] for ex in exs}) > 10
    for ex in exs:
        assert extract_answer(ex.solution) == ex.answer
        assert ex.solution.rstrip().endswith(f"#### {ex.answer}")
        assert ex.solution.count("####") == 1
        assert not ex.question.endswith("Do not include units.")
        assert re.fullmatch(r"-?\d+(\.\d+)?", ex.answer), ex.answer


def test_perturb_and_similar_gsm_symbolic():
    ex = tasks.load_task("gsm_symbolic", "train", 1, seed=0)[0]
    p = tasks.perturb_problem(ex, seed=1)
    assert p.meta["template"] == ex.meta["template"] and p.question != ex.question
    assert extract_answer(p.solution) == p.answer
    sim = tasks.similar_examples(ex, 3, seed=0)
    assert {s.meta["template"] for s in sim} == {ex.meta["template"]}
    assert all(extract_answer(s.solution) == s.answer for s in sim)


def test_prefix_perturbation():
    prompt = tasks.format_prompt("Q?")
    assert tasks.perturb_prompt(prompt, "first") == "Q?\nAnswer: First"
    assert tasks.perturb_prompt(prompt, "we_know_that") == "Q?\nAnswer: We know that"
    assert tasks.perturb_prompt(prompt, "Let us see") == "Q?\nAnswer: Let us see"


def test_errors():
    with pytest.raises(PremError, match=r"unknown task 'nope'.*arith.*gsm8k"):
        tasks.load_task("nope", "train", 5)
    with pytest.raises(PremError, match="n must be a positive integer"):
        tasks.load_task("arith", "train", 0)
    with pytest.raises(PremError, match="unknown split 'dev'"):
        tasks.load_task("arith", "dev", 5)
    with pytest.raises(PremError, match=r"unknown options \['max_stepz'\]"):
        tasks.load_task("arith", "train", 5, max_stepz=3)
    ex = tasks.Example("g", "q", "#### 1", "1", dict(task="gsm8k"))
    with pytest.raises(PremError, match="perturb_problem.*gsm8k"):
        tasks.perturb_problem(ex, 0)


GSM_ROWS = [
    {"question": f"Q{i}: Sam has {i} pens and buys 1,000 more. How many?",
     "answer": f"Sam has {i} + 1000 = <<{i}+1000={i + 1000}>>{i + 1000} pens.\n#### {i + 1000:,}"}
    for i in range(20)
]


def test_gsm8k_local_files(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.parquet"
    train.write_text("".join(json.dumps(r) + "\n" for r in GSM_ROWS[:15]))
    pd.DataFrame(GSM_ROWS[15:]).to_parquet(test)
    files = {"train": str(train), "test": str(test)}
    cache = str(tmp_path / "hf")
    tr = tasks.load_task("gsm8k", "train", 15, seed=0, data_files=files, cache_dir=cache)
    te = tasks.load_task("gsm8k", "test", 5, seed=0, data_files=files, cache_dir=cache)
    assert sorted(int(e.answer) for e in tr) == list(range(1000, 1015))
    assert sorted(int(e.answer) for e in te) == list(range(1015, 1020))
    ex = next(e for e in tr if e.question.startswith("Q3:"))
    assert ex.answer == "1003"
    assert ex.solution == "Sam has 3 + 1000 = <<3+1000=1003>>1003 pens.\n#### 1003"
    plain = tasks.load_task("gsm8k", "train", 15, seed=0, data_files=files, cache_dir=cache, strip_annotations=True)
    assert "<<" not in "".join(e.solution for e in plain)
    with pytest.raises(PremError, match="only 15 are available"):
        tasks.load_task("gsm8k", "train", 16, seed=0, data_files=files, cache_dir=cache)
    with pytest.raises(PremError, match="not found"):
        tasks.load_task("gsm8k", "train", 1, data_files={"train": str(tmp_path / "no.json")})


def test_gsm8k_single_file_is_split_by_hash(tmp_path):
    f = tmp_path / "all.json"
    f.write_text(json.dumps(GSM_ROWS))
    n_test = sum(tasks.base._bucket(r["question"]) < 50 for r in GSM_ROWS)
    kw = dict(data_files=str(f), cache_dir=str(tmp_path / "hf"), test_fraction=0.5)
    te = tasks.load_task("gsm8k", "test", n_test, seed=0, **kw)
    tr = tasks.load_task("gsm8k", "train", 20 - n_test, seed=0, **kw)
    assert not {e.question for e in te} & {e.question for e in tr}


MATH_ROWS = [
    {"problem": "What is $1/2 + 0$?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1",
     "type": "Prealgebra"},
    {"problem": "Find the point.", "solution": "We get $\\boxed{(1,2)}$.", "level": "Level 3", "type": "Algebra"},
    {"problem": "Simplify.", "solution": "First \\boxed{2}, then $\\boxed{\\sqrt{x^{2}}}$.", "level": "Level 5",
     "type": "Algebra"},
    {"problem": "No box.", "solution": "The answer is 4.", "level": "Level ?", "type": "Geometry"},
]


def test_math_local_files(tmp_path):
    f = tmp_path / "math_train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    kw = dict(data_files={"train": str(f)}, cache_dir=str(tmp_path / "hf"))
    exs = {e.question: e for e in tasks.load_task("math", "train", 3, seed=0, **kw)}
    assert "No box." not in exs  # ungradable rows are dropped
    assert exs["What is $1/2 + 0$?"].answer == "\\frac{1}{2}"
    assert exs["What is $1/2 + 0$?"].solution.endswith("$.\n#### \\frac{1}{2}")
    assert exs["Find the point."].answer == "(1,2)"
    assert exs["Simplify."].answer == "\\sqrt{x^{2}}"
    assert exs["Simplify."].meta["level"] == 5 and exs["Simplify."].meta["subject"] == "Algebra"
    assert grade("so #### 0.5", exs["What is $1/2 + 0$?"].answer).correct
    low = tasks.load_task("math", "train", 1, seed=0, levels=[1], **kw)
    assert [e.answer for e in low] == ["\\frac{1}{2}"]
    with pytest.raises(PremError, match="unknown subjects"):
        tasks.load_task("math", "train", 1, subjects=["astrology"], **kw)


# ---- a new task is one entry in one place ----------------------------------------------------------

def _toy(split, n, seed, top: int = 9):
    """A task a user might add: 'What is a + b?' with its sum, hash-split like arith."""
    out = []
    for a in range(1, 400):
        for b in range(1, top + 1):
            ex = _toy_example(a, b, split)
            if tasks.base._in_split(ex.question, split):
                out.append(ex)
    rng = np.random.default_rng(seed)
    return [out[i] for i in sorted(rng.permutation(len(out))[:n])]


def _toy_example(a, b, split):
    return tasks.Example(f"toy-{a}-{b}", f"What is {a} + {b}?", f"{a} + {b} = {a + b} #### {a + b}", str(a + b),
                         dict(task="toy", split=split, template=b, a=a))


def _toy_variant(ex, rng, seed):
    return _toy_example(rng.randrange(1, 400), ex.meta["template"], ex.meta["split"])


def test_a_task_registered_in_one_place_flows_through(monkeypatch):
    from premem import curation_sources, data as data_lib
    from premem.config import load_params

    monkeypatch.setitem(tasks.TASKS, "toy", tasks.Task(load=_toy, splits=("train", "test"), variant=_toy_variant,
                                                       checker=lambda options: "strict"))
    cfg = load_params(dict(task="toy", task_options=dict(top=5), n_train=6, n_test=3, n_heldout=2))
    train, test, held = data_lib.load_examples(cfg, heldout=True)
    assert (len(train), len(test), len(held)) == (6, 3, 2)
    assert not {ex.question for ex in train + held} & {ex.question for ex in test}
    assert all(int(ex.meta["template"]) <= 5 for ex in train)  # its own option reached it
    assert tasks.answer_checker(cfg) == "strict" and tasks.has_variants("toy")
    similar = tasks.similar_examples(train[0], 3, seed=1)
    assert len(similar) == 3 and all(s.meta["template"] == train[0].meta["template"] for s in similar)
    assert all(s.meta["split"] == "train" and s.question != train[0].question for s in similar)
    assert tasks.perturb_problem(train[0], seed=2).answer != "" and \
        isinstance(curation_sources.source_for(cfg), curation_sources.ProceduralSource)
    with pytest.raises(PremError, match="task 'toy': unknown split 'pretrain'; known: \\['train', 'test'\\]"):
        tasks.load_task("toy", "pretrain", 2)
    with pytest.raises(PremError, match="task 'toy': unknown options \\['steps'\\]; known: \\['top'\\]"):
        tasks.load_task("toy", "train", 2, steps=3)
