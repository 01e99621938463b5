"""Answer extraction and the strict and lenient judgements, on hand-checked cases."""
import threading

import pytest

from premem.errors import PremError
from premem.grading import Grade, extract_answer, extract_boxed, grade, grade_many, normalize_answer


@pytest.mark.parametrize("text, expected", [
    ("so 1234 in all.\n#### 1,234.", "1234"),
    ("#### $5", "5"),
    ("#### 3.0", "3"),
    ("#### 0.50", "0.5"),
    ("#### -0", "0"),
    ("#### 14\nDone.", "14"),
    ("#### 7 #### 9", "7 #### 9"),  # text after the FIRST marker, up to the end of its line
    ("#### (1,2)", "(1,2)"),  # a tuple's comma is not a thousands separator
    ("#### \\frac{1}{2}", "\\frac{1}{2}"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["The answer is 14.", "", "####", "#### \nDone."])
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_normalize_answer():
    assert normalize_answer(" 1,234,567 ") == "1234567"
    assert normalize_answer("2047.50") == "2047.5"
    assert normalize_answer("x + 1.") == "x + 1"


@pytest.mark.parametrize("text, expected", [
    ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),  # last one, nested braces
    ("\\fbox{7}", "7"),
    ("so \\boxed 5$.", "5"),
    ("no box here", None),
    ("\\boxed{unclosed", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_grade_strict_and_lenient():
    assert grade("x #### 1,234.", "1234") == Grade("1234", True, True, True)
    assert grade("#### 3.0", "3") == Grade("3", True, True, True)  # numeric equality, strict
    half = grade("#### 0.5", "\\frac{1}{2}")
    assert half.parse_ok and not half.correct_strict and half.correct
    wrong = grade("#### 4", "3")
    assert wrong == Grade("4", True, False, False)
    assert grade("#### \\sqrt{2}", "\\sqrt 2").correct
    assert not grade("#### \\sqrt{3}", "\\sqrt{2}").correct


def test_unparseable_is_neither_correct():
    g = grade("The answer is 3.", "3")
    assert g == Grade(None, False, False, False)


def test_lenient_falls_back_to_strict_on_garbage():
    g = grade("#### \\frac{{{", "3")
    assert g.parse_ok and not g.correct and not g.correct_strict


def test_grading_in_worker_thread():
    # math-verify's signal-based timeout raises off the main thread unless turned off.
    out = {}

    def work():
        out["half"] = grade("#### 0.5", "\\frac{1}{2}")
        out["wrong"] = grade("#### 0.25", "\\frac{1}{2}")

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out["half"].correct and not out["half"].correct_strict
    assert not out["wrong"].correct


def test_grade_many():
    gs = grade_many(["#### 1", "#### 2", "none"], ["1", "3", "1"])
    assert [g.correct for g in gs] == [True, False, False]
    assert [g.parse_ok for g in gs] == [True, True, False]
    assert [g.correct for g in grade_many(["#### 5", "#### 5.0"], "5")] == [True, True]
    with pytest.raises(PremError, match="2 completions but 1"):
        grade_many(["#### 1", "#### 2"], ["1"])
