"""Does premem.llama_decode pay for itself? Sampling time and samples, lean decoder vs the model's
own forward, on the CPU default's real workload: a finetuned checkpoint of its sweep answering the
test questions (k = 4, the sweep's decoding keys), at one torch thread as the sweep runs.

    .venv/bin/python scripts/benchmark_decoder.py --run lr0.0005_ep15_frac1_seed0 --prompts 128 --repeats 2

Needs the CPU default's sweep record (premem sweep --params params/tiny.yaml). Not a test: read the table.
"""
from __future__ import annotations

import argparse
import time

import torch

from premem import llama_decode, record, recorder, training
from premem import data as data_lib
from premem.config import load_params, project_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/tiny.yaml")
    ap.add_argument("--run", default="lr0.0005_ep15_frac1_seed0")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_params(project_root() / args.params)
    folder = record.default_dir(cfg)
    ckpt = record.final_checkpoint(folder, args.run)
    lm, tok = training.load_checkpoint(ckpt)
    _, test = data_lib.load_examples(cfg)
    prompts = [cfg.prompt_template.format(question=ex.question) for ex in test[:args.prompts]]
    lean_supported = llama_decode.supports
    results, times = {}, {}
    for name, supports in [("lean (llama_decode)", lean_supported), ("model forward", lambda m: False)]:
        llama_decode.supports = supports
        spent = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[name] = recorder.sample_answers(cfg, lm, ckpt, tok, prompts, cfg.k, seed=7)
            spent.append(time.perf_counter() - start)
        times[name] = min(spent)
    llama_decode.supports = lean_supported
    lean, plain = results.values()
    same = sum(a == b for x, y in zip(lean, plain) for a, b in zip(x, y))
    total = sum(len(x) for x in lean)
    print(f"{args.run} final checkpoint, {len(prompts)} test prompts x {cfg.k}, one thread, best of {args.repeats}")
    for name, t in times.items():
        print(f"  {name:20s} {t:7.2f} s")
    print(f"  speed-up {times['model forward'] / times['lean (llama_decode)']:.2f}x; samples equal: {same} of {total}")


if __name__ == "__main__":
    main()
