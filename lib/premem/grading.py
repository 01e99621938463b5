"""Answer extraction and grading: a strict "#### N" match beside a lenient math-verify one.

Completions end their trace with "#### <answer>" (see premem.tasks). `grade` reports both judgements, as
lm-evaluation-harness does for GSM8k: `correct_strict` compares the normalised answer strings (numbers
compared by value, so "3.0" equals "3"); `correct` asks math-verify whether the two are the same
mathematical object ("\\frac{1}{2}" equals "0.5"). We extract the answer text ourselves because
math-verify on a whole completion would grade the last number it finds, not the marked answer.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Sequence

from math_verify import parse, verify

from premem.errors import PremError

MARKER = "####"
# A comma between a digit and exactly three digits is a thousands separator; other commas
# (tuples and intervals in MATH answers) are kept.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")

# math-verify logs a warning once when its timeouts are off; that is our deliberate choice off the
# main thread, so keep it quiet.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Grade:
    answer: str | None  # the normalised extracted answer; None when the completion has no "####"
    parse_ok: bool
    correct_strict: bool
    correct: bool


def normalize_answer(text: str) -> str:
    """Strip spaces, thousands commas, "$" and a trailing period; write numbers canonically ("3.0" -> "3")."""
    s = _THOUSANDS.sub("", text.strip()).replace("$", "").strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    if _NUMBER.fullmatch(s):
        try:
            d = Decimal(s)
            # Integral values print without a fraction; others without trailing zeros or exponent.
            s = str(d.quantize(Decimal(1))) if d == d.to_integral_value() else format(d.normalize(), "f")
        except InvalidOperation:  # more digits than Decimal's context holds: leave the text as it is
            return s
        if s == "-0":
            s = "0"
    return s


def extract_answer(text: str) -> str | None:
    """The normalised text after the first "####" up to the end of its line; None when there is none."""
    pos = text.find(MARKER)
    if pos < 0:
        return None
    answer = normalize_answer(text[pos + len(MARKER):].split("\n", 1)[0])
    return answer or None


def extract_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}), braces balanced; None when absent or unclosed."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        # "\boxed 5" (no braces) occurs in a few MATH solutions.
        bare = re.findall(r"\\boxed ([^\s$]+)", text)
        return bare[-1] if bare else None
    start, depth = starts[-1], 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None


@lru_cache(maxsize=65536)
def _mv_parse(answer: str, with_timeout: bool):
    # Wrapping in "$...$" makes math-verify read bare LaTeX such as \sqrt{2}, which it otherwise drops.
    # parsing_timeout=None turns off its signal.alarm, which only works on the main thread.
    return parse(f"${answer}$", parsing_timeout=5 if with_timeout else None)


def _lenient(answer: str, gold: str) -> bool:
    on_main = threading.current_thread() is threading.main_thread()
    gold_p, ans_p = _mv_parse(gold, on_main), _mv_parse(answer, on_main)
    if not gold_p or not ans_p:
        return False
    # Gold first: math-verify's comparison is not symmetric (e.g. for intervals and relations).
    return bool(verify(gold_p, ans_p, timeout_seconds=5 if on_main else None))


def _extracting(extract, lenient: bool = True):
    """A checker that extracts the answer with `extract`, compares it to the gold answer strictly
    (normalised strings) and, if `lenient`, with math-verify."""
    def check(completion: str, gold: str) -> Grade:
        answer = extract(completion)
        if answer is None:
            return Grade(answer=None, parse_ok=False, correct_strict=False, correct=False)
        strict = answer == normalize_answer(gold)
        if strict or not lenient:
            return Grade(answer=answer, parse_ok=True, correct_strict=strict, correct=strict)
        try:
            ok = _lenient(answer, normalize_answer(gold))
        except Exception:  # math-verify/sympy failure on odd text: the strict judgement stands
            ok = strict
        return Grade(answer=answer, parse_ok=True, correct_strict=strict, correct=ok)

    return check


def boxed_answer(text: str) -> str | None:
    """The normalised contents of the last \\boxed{...}; None when there is none."""
    answer = extract_boxed(text)
    return normalize_answer(answer) or None if answer is not None else None


def _math_verify_whole(completion: str, gold: str) -> Grade:
    """math-verify finds the answer in the whole completion itself (its last boxed or final expression)."""
    on_main = threading.current_thread() is threading.main_thread()
    try:
        found = parse(completion, parsing_timeout=5 if on_main else None)
    except Exception:
        found = []
    if len(found) < 2:
        return Grade(answer=None, parse_ok=False, correct_strict=False, correct=False)
    answer = normalize_answer(str(found[1]))
    strict = answer == normalize_answer(gold)
    try:
        ok = strict or _lenient(answer, normalize_answer(gold))
    except Exception:
        ok = strict
    return Grade(answer=answer, parse_ok=True, correct_strict=strict, correct=ok)


def _exact(completion: str, gold: str) -> Grade:
    answer = completion.strip()
    ok = answer == gold.strip()
    return Grade(answer=answer or None, parse_ok=bool(answer), correct_strict=ok, correct=ok)


# How a completion is judged right, per dataset (a task's `checker` option). A new checker is one
# entry here. `correct` is what accuracies read; `correct_strict` is the exact-string judgement.
CHECKERS = {
    "marker": _extracting(extract_answer),  # the text after "####", strict beside math-verify (GSM8k style)
    "strict": _extracting(extract_answer, lenient=False),  # the text after "####", exact match only
    "boxed": _extracting(boxed_answer),  # the last \\boxed{...} (MATH style), strict beside math-verify
    "math_verify": _math_verify_whole,  # math-verify's own extraction from the whole completion
    "exact": _exact,  # the whole completion, stripped, equals the gold string
}
# Checkers that can also read the gold answer off a solution, when the data has no answer field.
ANSWER_IN_SOLUTION = {"marker": extract_answer, "strict": extract_answer, "boxed": boxed_answer}


def check_checker(name: str) -> str:
    if name not in CHECKERS:
        raise PremError(f"unknown answer checker {name!r}; known: {', '.join(CHECKERS)}")
    return name


def grade(completion: str, gold: str, checker: str = "marker") -> Grade:
    """Grade one completion against a gold answer (already the bare answer, e.g. "42" or "\\frac{1}{2}")."""
    return CHECKERS[check_checker(checker)](completion, gold)


def grade_many(completions: Sequence[str], gold: str | Sequence[str], checker: str = "marker") -> list[Grade]:
    """`grade` over many completions; `gold` is one answer for all or one per completion."""
    golds = [gold] * len(completions) if isinstance(gold, str) else list(gold)
    if len(golds) != len(completions):
        raise PremError(f"grade_many: {len(completions)} completions but {len(golds)} gold answers")
    check = CHECKERS[check_checker(checker)]
    return [check(c, g) for c, g in zip(completions, golds)]
