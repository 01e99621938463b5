"""Claim 4's ceiling on the CPU default: can data aimed at what the base lacks beat i.i.d. data at all?

The default's base never saw 4 of arith's 16 step phrasings (`embedded_pretrain_task_options`).
Finetune it on the curation originals plus N fresh problems that either all carry a held-back
phrasing ("targeted", the best any selection rule could collect) or are i.i.d. ("iid"), then
sample the test set and report accuracy by the number of held-back phrasings in a problem. If
targeted data does not beat i.i.d. data here, no curation rule can. Not a test: run it and read.

    .venv/bin/python scripts/targeted_upper_bound.py targeted 256 --epochs 5
    .venv/bin/python scripts/targeted_upper_bound.py iid 256 --epochs 5 --seed 1   # seeds 0-2: error bars

2026-11-27, 2 cores, lr 5e-4, 5 epochs. BPE base (the default since): targeted 0.662 / 0.672 /
0.688 vs iid 0.646 / 0.671 / 0.669 (seeds 0, 1, 2). Character-level base (seed 0): targeted 0.225
vs iid 0.232 (5 epochs), 0.256 vs 0.263 (15).
"""
from __future__ import annotations

import argparse
import tempfile

import pandas as pd
import torch

from premem import bases, config, curation, grading, model, recorder, run_grid, sweep, tasks
from premem import data as data_lib


def held_back(ex, seen: int) -> list[str]:
    """The steps of an arith problem whose phrasing index is beyond the pretraining pool's."""
    return [f"{kind}{i}" for kind, i in tasks.arith_steps(ex.meta["template"]) if i >= seen]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["targeted", "iid"])
    p.add_argument("n_new", type=int)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--params", default="params/tiny.yaml")
    p.add_argument("--seed", type=int, default=0, help="training, collection and sampling seed")
    args = p.parse_args()
    torch.set_num_threads(1)  # two of these side by side beat one with two threads

    cfg = curation.curation_params(config.load_params(args.params))
    seen = (cfg.embedded_pretrain_task_options or {}).get("step_phrasings")
    if cfg.task != "arith" or seen is None:
        raise SystemExit(f"{args.params}: needs task arith and embedded_pretrain_task_options.step_phrasings")
    originals, test = data_lib.load_examples(cfg)
    # Fresh problems from the training split (another seed), none of them an original.
    taken = {ex.id for ex in originals}
    fresh = tasks.load_task("arith", "train", 20 * args.n_new, seed=cfg.data_seed + 7 + 1000 * args.seed,
                            **cfg.task_options)
    pool = [ex for ex in fresh if ex.id not in taken]
    new = [ex for ex in pool if args.kind == "iid" or held_back(ex, seen)][:args.n_new]
    data = originals + new

    base = bases.base_model_path(cfg, progress=False)
    lm, tok = model.load_base(base)
    spec = run_grid.RunSpec(args.kind, cfg.curation_lr, args.epochs, 1.0, args.seed)
    with tempfile.TemporaryDirectory() as out:  # trained as a curation round is
        sweep.finetune_on(cfg, lm, tok, data, out, spec, args.epochs, args.epochs)
    answers = recorder.sample_answers(cfg, lm, base, tok, [tasks.format_prompt(ex, cfg.prompt_template) for ex in test],
                                   cfg.k_test, seed=args.seed)
    rows = [dict(held_back=min(2, len(held_back(ex, seen))), phrasing="+".join(held_back(ex, seen)) or "-",
                 correct=g.correct)
            for ex, a in zip(test, answers) for g in grading.grade_many(a, ex.answer)]
    df = pd.DataFrame(rows)
    share = sum(bool(held_back(ex, seen)) for ex in new) / max(1, len(new))
    print(f"{args.kind} seed {args.seed}: {len(originals)} originals + {len(new)} new ({share:.0%} with a held-back phrasing), "
          f"{args.epochs} epochs: test accuracy {df.correct.mean():.3f}")
    print(df.groupby("held_back").correct.agg(["mean", "size"]).round(3).to_string())
    print(df[df.held_back == 1].groupby("phrasing").correct.agg(["mean", "size"]).round(3).to_string())


if __name__ == "__main__":
    main()
