"""The examples a run is about: a task's train / test / held-out splits as the params choose them,
a recorded run's training examples (by the ids its run.json keeps), and a user's own JSON Lines
rows (the jsonl task), with the splits kept apart; and the training rows `premem examples --below`
writes back out."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from premem import io, record, record_folder, tasks
from premem.config import Params
from premem.errors import PremError


def load_examples(cfg: Params, heldout: bool = False):
    """(train, test) examples; with heldout=True also the held-out training examples.

    Held-out examples come from the training split but no run trains on them: their perplexity at
    every checkpoint shows what a solution the model never saw scores, which calibrates the
    memorization threshold without test labels (`premem.metrics.calibrate_tau`).
    """
    options = dict(cfg.task_options)
    if cfg.data_files:
        options["data_files"] = cfg.data_files
    pool = tasks.load_task(cfg.task, split="train", n=cfg.n_train + cfg.n_heldout, seed=cfg.data_seed, **options)
    train, held = pool[:cfg.n_train], pool[cfg.n_train:]
    test = tasks.load_task(cfg.task, split="test", n=cfg.n_test, seed=cfg.data_seed, **options)
    if not train:
        raise PremError(f"task '{cfg.task}' gave an empty training set")
    return (train, test, held) if heldout else (train, test)


def run_examples(record_dir: str | Path, run: str, cfg: Params | None = None):
    """(train examples of `run`, test examples) as the sweep used them, from run.json's ids."""
    record_dir = Path(record_dir)
    cfg = cfg or record.read_config(record_dir)
    info = record.run_info(record_dir, run)
    train_all, test = load_examples(cfg)
    by_id = {ex.id: ex for ex in train_all}
    missing = [i for i in info["example_ids"] if i not in by_id]
    if missing:
        raise PremError(f"run {run}: training examples {missing[:3]} are not in task '{cfg.task}' as configured")
    return [by_id[i] for i in info["example_ids"]], test


def with_own_data(cfg: Params, train=None, test=None, heldout=None) -> Params:
    """The params of a record of a user's own data files: the jsonl task over them, at absolute
    paths (the record's hash then does not depend on where it ran, and `premem examples --below`
    finds the rows again). Arguments that are not paths (lists of Examples) are left out."""
    files = {split: str(Path(f).resolve()) for split, f in (("train", train), ("test", test), ("heldout", heldout))
             if isinstance(f, (str, Path))}
    for f in files.values():
        if not Path(f).is_file():
            raise PremError(f"data file not found: {f}")
    same = [s for s in files if s != "train" and files[s] == files.get("train")]
    if same:
        raise PremError(f"--{same[0]} {files[same[0]]} is the training data: {same[0]} examples are ones the run "
                        "never trained on (a test set; held-out rows of the training distribution)")
    return cfg.model_copy(update=dict(task="jsonl", data_files=files)) if files else cfg


def check_splits(train, test=(), heldout=()) -> None:
    """Test and held-out examples are not training examples: a question in both is one error (it
    would count as unseen while it was trained on: test accuracy, tau calibration)."""
    trained = {ex.question.strip(): ex for ex in train}
    for name, examples in (("test", test), ("held-out", heldout)):
        shared = [ex for ex in examples if ex.question.strip() in trained]
        if shared:
            ex = shared[0]
            raise PremError(f"{len(shared)} {name} examples are training questions too (first: {name} {ex.id} is "
                            f"training {trained[ex.question.strip()].id}): keep the splits apart")


def load_own_examples(cfg: Params, path: str | Path | None, split: str) -> list:
    """Every example of a user's data file (the jsonl task with cfg.task_options), or [] for None."""
    if path is None:
        return []
    unknown = sorted(set(cfg.task_options) - set(tasks.JSONL_OPTIONS))
    if unknown:
        raise PremError(f"task_options: unknown keys {unknown} for your own data (the jsonl task); "
                        f"known: {', '.join(tasks.JSONL_OPTIONS)}")
    return tasks.read_jsonl(path, split, **cfg.task_options)


def write_training_rows(record_dir: str | Path, ids: list[str], out: str | Path) -> int:
    """The training rows with these ids as JSON Lines: for the jsonl task, the user's own lines as
    they are; for premem's tasks, {id, question, solution, answer}. Only rows as they were measured
    are written: a row edited since it was recorded (its example_digest differs) is left out, with a
    line saying how many. Returns how many were written."""
    record_dir = Path(record_dir)
    if not record.is_record_dir(record_dir):
        raise PremError(f"{record_dir}: --below needs a premem record (the released logs hold no training rows)")
    cfg = record.read_config(record_dir)
    record_folder.check_output(out, cfg, record_dir)
    wanted = set(ids)
    runs = sorted(p.name for p in (record_dir / "runs").iterdir() if (p / "run.json").is_file())
    measured = {}  # id -> digest of the row recorded, from every run that keeps them
    for run in runs:
        measured |= record.run_info(record_dir, run).get("example_digests", {})
    if cfg.task == "jsonl":
        if not (cfg.data_files or {}).get("train"):
            raise PremError(f"{record_dir}: its training rows were given in memory, not as a file: --below has "
                            "no rows to write (record with a JSON Lines file to use it)")
        path = Path(cfg.data_files["train"])
        examples = [ex for ex in load_own_examples(cfg, path, "train") if ex.id in wanted]
        lines = path.read_text().splitlines()
        kept = [ex for ex in examples if not measured or measured.get(ex.id) == record.example_digest(ex)]
        rows = [lines[ex.meta["line"] - 1] for ex in kept]
        if len(kept) < len(wanted):
            print(f"premem: {len(wanted) - len(kept)} of the {len(wanted)} rows picked are not in {path} as they were "
                  "recorded (edited or removed since): left out", file=sys.stderr)
    else:
        examples = {ex.id: ex for run in runs for ex in run_examples(record_dir, run, cfg)[0]}
        rows = [json.dumps(dict(id=ex.id, question=ex.question, solution=ex.solution, answer=ex.answer))
                for i, ex in examples.items() if i in wanted]
    io.write_text(out, "".join(r + "\n" for r in rows))
    return len(rows)
