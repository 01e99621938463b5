"""jsonl: a user's own data, one JSON object per line, fields named by task_options (question,
solution, answer, id) and judged by the `checker` option (premem.grading.CHECKERS)."""
from __future__ import annotations

import json
from pathlib import Path

from premem.errors import PremError
from premem.grading import ANSWER_IN_SOLUTION, check_checker, normalize_answer
from premem.tasks.base import Example, Task, _select

# The jsonl task's options: the user's column names, and how answers are judged.
JSONL_OPTIONS = ("question", "solution", "answer", "id", "checker")


def read_jsonl(path, split: str, question: str = "question", solution: str = "solution", answer: str = "answer",
               id: str | None = None, checker: str = "marker") -> list[Example]:
    """Every row of a JSON Lines file, in file order, as an Example. Field names are the user's
    (`id` None: the line number); a row without `answer` takes the gold answer the checker reads
    off its solution. A bad row is an error naming file:line and the field."""
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


TASK = Task(load=_jsonl, checker=lambda options: options.get("checker", "marker"))
