"""How hard each curation chain's collected data was for the run that chose it, and the base model's
own test accuracy (premem.curation): both sample k_test answers per question as a run's final
checkpoint is sampled. The curation judges each collection as soon as it is made; notebook 07 reads
collected_accuracy's cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from premem import grading, io, record, recorder, tasks
from premem import model as model_lib
from premem.config import Params
from premem.curation_chains import chain_of, read_examples, run_name
from premem.curation_rules import n_steps
from premem.tasks import Example

JUDGED = "collected_accuracy.parquet"  # in the curation folder


def example_accuracy(cfg: Params, lm, checkpoint, tok, examples: list[Example]) -> np.ndarray:
    """Per example, the fraction of k_test sampled answers that are right, sampled as a run's final
    checkpoint is (cfg.data_seed): the base model's test accuracy and `collected_accuracy` use it."""
    prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in examples]
    answers = recorder.sample_answers(cfg, lm, checkpoint, tok, prompts, cfg.k_test or cfg.k, cfg.data_seed)
    checker = tasks.answer_checker(cfg)
    return np.asarray([np.mean([g.correct for g in grading.grade_many(a, ex.answer, checker)])
                       for ex, a in zip(examples, answers)], dtype=float)


def record_base(cfg: Params, out: Path, base: str, test: list[Example]) -> None:
    """The base model's test accuracy before any finetuning (k_test per question): the floor every
    scaling curve starts from. Cached in <out>/base.json."""
    f = out / "base.json"
    if not f.exists():
        lm, tok = model_lib.load_configured(cfg, base)
        acc = example_accuracy(cfg, lm, base, tok, test)  # the same k per question: its mean is the sample mean
        io.write_json(f, dict(test_acc=float(acc.mean()), n_test=len(test), k=cfg.k_test or cfg.k))


def collected_accuracy(cfg: Params, folder: str | Path, progress: bool = True) -> pd.DataFrame:
    """How hard each strategy's collected data was for the run whose scores chose it: per (strategy,
    round, seed), the accuracy of round r-1's final checkpoint on the examples collected for round r
    (k_test samples each), and their mean step count. Algorithm 1 pays off only where data "like the
    selected originals" is data the model still gets wrong; round 1's rows share one judge per seed
    (the originals' run), so they compare the rules directly. Cached in <folder>/collected_accuracy.parquet
    (the curation fills it as it goes), rewritten after each judge (a killed run resumes)."""
    folder = Path(folder)
    by_judge = collected_by_judge(folder, judged(folder))
    for judge, items in tqdm(sorted(by_judge.items()), desc="collected data", disable=not progress):
        add_judged(folder, judge_rows(cfg, folder, judge, items))
    rows = pd.read_parquet(folder / JUDGED) if (folder / JUDGED).exists() else pd.DataFrame(
        columns=["strategy", "round", "seed"])
    return rows.sort_values(["round", "strategy", "seed"], kind="stable").reset_index(drop=True)


def judged(folder: Path) -> set:
    """The (strategy, round, seed) collections already judged."""
    done = pd.read_parquet(folder / JUDGED) if (folder / JUDGED).exists() else None
    return set() if done is None else set(zip(done.strategy, done["round"], done.seed))


def collected_by_judge(folder: Path, done: set) -> dict:
    """{judge run: [((strategy, round, seed), examples)]} of the collections not judged yet."""
    by_judge = {}
    for f in sorted((folder / "collected").glob("*.jsonl")):  # run_name(strategy, round, seed).jsonl
        s, r, seed = key = chain_of(f.stem)
        if key not in done:
            by_judge.setdefault(run_name(s, r - 1, seed), []).append((key, read_examples(f)))
    return by_judge


def judge_rows(cfg: Params, folder: Path, judge: str, items: list) -> list[dict]:
    """The rows of one judge's collections: its final checkpoint samples them all in one call."""
    ckpt = record.final_checkpoint(folder, judge)
    lm, tok = model_lib.load_base(str(ckpt), dtype=cfg.dtype)
    acc = iter(example_accuracy(cfg, lm, ckpt, tok, [ex for _, exs in items for ex in exs]))
    return [dict(strategy=s, round=r, seed=seed, judge=judge, n_collected=len(exs),
                 accuracy=float(np.mean([next(acc) for _ in exs])) if exs else np.nan,
                 mean_steps=float(np.mean([n_steps(ex) for ex in exs])) if exs else np.nan)
            for (s, r, seed), exs in items]


def add_judged(folder: Path, rows: list[dict]) -> None:
    # Only one process writes the table: collected_accuracy, or the curation's parent.
    done = pd.read_parquet(folder / JUDGED).to_dict("records") if (folder / JUDGED).exists() else []
    io.write_parquet(folder / JUDGED, pd.DataFrame(done + rows))
