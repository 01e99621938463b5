"""Where `premem reproduce`'s time goes on this machine, in one run: the machine's float32 matmul
rate; premem's sampler against transformers' `generate` on the CPU default's base (tokens/s and the
share of the matmul rate each reaches); one sweep run profiled by what it spends (training,
sampling, perplexity, grading, the baseline predictors); and, with --stages, the expensive stages
of the CPU default from nothing (sweep, perturbations, curation) in a temporary folder, each timed.

    .venv/bin/python scripts/benchmark_reproduce.py --out docs/benchmark_reproduce.json [--stages]

Sampling and the profiled run use one torch thread, as each of the sweep's worker processes does.
Not a test: read the table (docs/speed.md carries one run's, with its date and machine).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from premem import (bars, baselines, bases, grading, perplexity, record_folder, run_grid, sampling, sweep, tasks,
                    training)
from premem import data as data_lib
from premem import model as model_lib
from premem.config import load_params, project_root
from premem.reproduce import STAGES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_engines import matmul_rate  # noqa: E402

PHASES = {  # what a sweep run spends its time on: the function, and what it is
    "training": (training.finetune, "finetuning (Trainer), recording excluded"),
    "sampling": (sampling.sample, "k answers to every train and test question"),
    "perplexity": (perplexity.target_nll, "gold targets' NLL"),
    "grading": (grading.grade_many, "answer checking (math-verify)"),
    "baselines": (baselines.gradient_variance, "gradient variance (claim 2)"),
}


def machine() -> dict:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    return dict(cpu=name, cores=torch.get_num_threads(), avx512="avx512f" in cpu, torch=torch.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d"))


def sampler(cfg, n_prompts: int, flops_per_token: float) -> list[dict]:
    """premem's decoding loop against `generate` (pure sampling at the params' temperature, the same
    prompts, k and token budget, batched the same), at one thread."""
    torch.set_num_threads(1)
    lm, tok = model_lib.load_base(bases.base_model_path(cfg, progress=False))
    test = tasks.load_task(cfg.task, "test", n_prompts, seed=cfg.data_seed, **cfg.task_options)
    prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in test]
    rows = []
    start = time.perf_counter()
    out = sampling.sample(lm, tok, prompts, k=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                          stop=cfg.stop, seed=0, batch_size=cfg.sample_batch_size, progress=False)
    spent = time.perf_counter() - start
    tokens = sum(len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for row in out for c in row)
    rows.append(dict(sampler="premem (sampling.sample)", seconds=spent, tokens=tokens))
    per_batch = max(1, cfg.sample_batch_size // cfg.k)
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(prompts), per_batch):
        enc = tok(prompts[i:i + per_batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            gen = lm.generate(**enc, do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                              max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.k,
                              pad_token_id=tok.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tok.pad_token_id).sum())
    rows.append(dict(sampler="transformers generate", seconds=time.perf_counter() - start, tokens=tokens))
    for r in rows:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["gflops"] = r["tokens_per_s"] * flops_per_token / 1e9
    return rows


def by_phase(fn, *args, **kwargs) -> dict:
    """fn(*args, **kwargs) under cProfile in this process: seconds in all and by phase (PHASES,
    cumulative; training without the recording it calls)."""
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(fn, *args, **kwargs)
    out = dict(total=time.perf_counter() - start)
    stats = pstats.Stats(profile).stats
    for phase, (phase_fn, _) in PHASES.items():
        code = phase_fn.__code__
        out[phase] = sum(v[3] for k, v in stats.items() if k[0] == code.co_filename and k[1] == code.co_firstlineno)
    out["training"] -= out["sampling"] + out["perplexity"] + out["grading"] + out["baselines"]  # recorded inside
    out["other"] = out["total"] - sum(out[p] for p in PHASES)
    return out


def profiled_run(cfg, folder: Path) -> dict:
    """One sweep run (the grid's longest: most epochs, full data) trained and recorded in this
    process at one thread, under cProfile; seconds by phase, cumulative."""
    torch.set_num_threads(1)
    spec = max(run_grid.grid(cfg), key=lambda s: (s.epochs, s.data_fraction))
    train, test, held = data_lib.load_examples(cfg, heldout=True)
    base = bases.base_model_path(cfg, progress=False)
    record_folder.create(folder, cfg)
    phases = by_phase(sweep.train_and_record, cfg, spec, run_grid.train_subset(train, spec), test, folder, base, held)
    return dict(run=spec.run, checkpoints=bars.saves(spec.epochs, sweep.save_every(cfg, spec.epochs)), **phases)


def stages(cfg, folder: Path) -> list[dict]:
    """The CPU default's expensive stages from nothing, in `folder`, as `premem reproduce` runs them."""
    cfg = cfg.model_copy(update=dict(out_dir=str(folder), cache_dir=str(folder / "cache")))
    rows = []
    for name, (run_stage, _) in STAGES.items():
        start = time.perf_counter()
        run_stage(cfg, True)
        rows.append(dict(stage=name, seconds=time.perf_counter() - start))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/tiny.yaml")
    ap.add_argument("--prompts", type=int, default=64, help="test prompts the samplers answer (k each)")
    ap.add_argument("--stages", action="store_true", help="also the stages from nothing (about half an hour)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    cfg = load_params(project_root() / args.params)
    lm, _ = model_lib.load_base(bases.base_model_path(cfg, progress=False))
    params = sum(p.numel() for p in lm.parameters())
    result = dict(machine=machine(), params=args.params, model_parameters=params,
                  matmul_gflops_1_thread=matmul_rate(1) / 1e9)
    result["matmul_gflops_all_threads"] = matmul_rate(result["machine"]["cores"]) / 1e9
    result["sampler"] = sampler(cfg, args.prompts, 2 * params)
    with tempfile.TemporaryDirectory() as tmp:
        result["sweep_run"] = profiled_run(cfg.model_copy(update=dict(workers=1)), Path(tmp) / "profile")
        if args.stages:
            result["stages"] = stages(cfg, Path(tmp) / "stages")
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
