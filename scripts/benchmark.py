"""Benchmark premem.perplexity and premem.sampling on a ~1M-parameter char-level Llama.

(a) batched ``target_nll`` vs the authors' one-forward-per-example loop on the same examples;
(b) ``sample`` throughput (generated tokens/s) with k=4 completions per prompt.
Each at every thread count in --threads. Not a test: run it and read the table.

    .venv/bin/python scripts/benchmark.py --n 256 --threads 1 2
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_lm: the char tokenizer and model builder
from tiny_lm import char_tokenizer, tiny_llama  # noqa: E402

from premem.perplexity import one_at_a_time_nll, target_nll  # noqa: E402
from premem.sampling import sample  # noqa: E402


def examples(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n synthetic arithmetic (prompt, target) pairs of about 150 characters together."""
    rng = random.Random(seed)
    prompts, targets = [], []
    for _ in range(n):
        a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(2, 9)
        prompts.append(f"Tom has {a} apples and buys {b} more, then shares them among {c} friends. "
                       f"How many are left over?\nAnswer:")
        s = a + b
        targets.append(f" {a}+{b}={s}. {s}%{c}={s % c}. #### {s % c}\nDone.")
    return prompts, targets


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU kernels run asynchronously
    return time.perf_counter() - t0, out


def measure(model, tok, prompts, targets, *, batch_size: int = 32, n_prompts: int = 64, k: int = 4,
            max_new_tokens: int = 64, sample_batch_size: int = 64) -> dict:
    """Batched vs one-at-a-time `target_nll` on the same examples, and `sample` tokens/s."""
    target_nll(model, tok, prompts[:8], targets[:8], progress=False)  # warm-up
    t_batch, (nll_b, n_b) = timed(lambda: target_nll(model, tok, prompts, targets, batch_size=batch_size,
                                                     progress=False))
    t_loop, (nll_l, n_l) = timed(lambda: one_at_a_time_nll(model, tok, prompts, targets, progress=False))
    assert np.array_equal(n_b, n_l)
    t_samp, out = timed(lambda: sample(model, tok, prompts[:n_prompts], k=k, max_new_tokens=max_new_tokens,
                                       stop="\nDone.", seed=0, batch_size=sample_batch_size,
                                       progress=False))
    n_gen = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for row in out for c in row)
    return dict(params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2), n=len(prompts),
                one_by_one_s=round(t_loop, 3), batched_s=round(t_batch, 3), speedup=round(t_loop / t_batch, 1),
                max_dnll_per_token=float(np.max(np.abs(nll_b - nll_l) / n_b)), sampled_tokens=n_gen,
                sample_s=round(t_samp, 2), tokens_per_s=round(n_gen / t_samp))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="examples for the perplexity benchmark")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    ap.add_argument("--batch-size", type=int, default=32, help="target_nll batch size")
    ap.add_argument("--prompts", type=int, default=64, help="prompts for the sampling benchmark")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sweeps", nargs="*", default=[], metavar="PARAMS",
                    help="also time `premem sweep` from scratch on these params files, e.g. params/smoke.yaml")
    args = ap.parse_args(argv)

    tok = char_tokenizer(bos=True)
    model = tiny_llama(len(tok), d_model=128, n_layers=4, n_heads=4, seed=0).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    prompts, targets = examples(args.n)
    chars = np.mean([len(p) + len(t) for p, t in zip(prompts, targets)])
    print(f"model: Llama d=128, 4 layers, vocab {len(tok)}, {n_params / 1e6:.2f}M params on {args.device}; "
          f"{args.n} examples of {chars:.0f} chars; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)  # an explicit entry point may set global threads
        m = measure(model, tok, prompts, targets, batch_size=args.batch_size, n_prompts=args.prompts, k=args.k,
                    max_new_tokens=args.max_new_tokens)
        rows.append((threads, m["one_by_one_s"], m["batched_s"], m["speedup"], m["max_dnll_per_token"],
                     m["sampled_tokens"], m["sample_s"], m["tokens_per_s"]))

    print()
    print(f"{'threads':>7} | {'1-by-1 s':>8} | {'batched s':>9} | {'speed-up':>8} | {'max |dNLL|/tok':>14} | "
          f"{'sampled tok':>11} | {'sample s':>8} | {'tok/s':>7}")
    print("-" * 96)
    for th, tl, tb, su, d, ng, ts, tps in rows:
        print(f"{th:>7} | {tl:>8.2f} | {tb:>9.2f} | {su:>7.1f}x | {d:>14.1e} | {ng:>11} | {ts:>8.2f} | {tps:>7.0f}")
    print(f"\nsampling: {args.prompts} prompts x k={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"batch_size=64 sequences; perplexity batch_size={args.batch_size}")

    for params in args.sweeps:
        time_sweep(params)


def time_sweep(params: str) -> None:
    """Wall time of a whole sweep into a fresh folder (the base model cache is kept)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "premem.cli", "sweep", "--params", params, "--out", out, "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"sweep {params}: {time.perf_counter() - t0:.0f} s wall (fresh record folder, cached base model)")


if __name__ == "__main__":
    main()
