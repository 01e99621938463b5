"""What `premem reproduce` from nothing would take at the machine's own rates: the work the CPU
default's records hold (training example-epochs, sampled answers), each priced at what premem
spends on it today (one thread, as a worker runs) and at its floor (its float32 FLOPs at the
measured matmul rate; decoding also reads its KV cache at the measured copy rate), summed over two
fully busy cores. Issue 30 asks for 12 minutes; this says whether any kernel could get there.

    .venv/bin/python scripts/speed_floor.py     # ~30 s; needs the CPU default's sweep and curation

Not a test: docs/speed.md carries one run's table with its date and machine.
"""
from __future__ import annotations

import glob
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from premem import bases, curation, curation_efficiency, record, run_grid, sampling, sweep, tasks, training
from premem import data as data_lib
from premem.config import load_params
from premem.encoding import build_features
from premem.model import load_base

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_engines import matmul_rate  # noqa: E402

RUN = "lr0.0005_ep15_frac1_seed0"  # a sampled checkpoint: the sweep's, answering the test questions


def copy_rate() -> float:
    """Memory copy bytes/s (read + write) of 512 MB, at the current thread count."""
    x = torch.empty(128 * 2 ** 20)
    y = torch.empty_like(x).copy_(x)
    start = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    return 2 * x.numel() * 4 * 5 / (time.perf_counter() - start)


def work(cfg) -> dict:
    """Example-epochs trained and answers sampled by the sweep, the perturbations and the curation."""
    sweep_dir, cur = record.default_dir(cfg), curation_efficiency.folder_of(cfg)
    for folder, command in ((sweep_dir, "sweep"), (cur, "curate")):
        if not (folder / "samples.parquet").is_file():
            raise SystemExit(f"speed_floor: no finished record at {folder}: run premem {command} "
                             "--params params/tiny.yaml first")
    trained = sum((r.epochs * r.n_train).sum() for r in (pd.read_parquet(d / "runs.parquet") for d in (sweep_dir, cur)))
    robust = sum(len(t) * t.k.iloc[0] for t in map(pd.read_parquet, glob.glob(str(sweep_dir / "robustness/*.parquet"))))
    judged = pd.read_parquet(cur / "collected_accuracy.parquet").n_collected.sum() * (cfg.k_test or cfg.k)
    samples = len(pd.read_parquet(sweep_dir / "samples.parquet", columns=["step"])) + robust + judged + \
        len(pd.read_parquet(cur / "samples.parquet", columns=["step"]))
    return dict(example_epochs=int(trained), samples=int(samples))


def main() -> None:
    cfg = load_params("params/tiny.yaml")
    flops, copy = matmul_rate(1), copy_rate()  # matmul_rate leaves torch at one thread
    counts = work(cfg)
    lm, tok = load_base(bases.base_model_path(cfg, progress=False))
    mc, n = lm.config, sum(p.numel() for p in lm.parameters())
    train, test = data_lib.load_examples(cfg)
    feats = build_features(tok, [tasks.format_prompt(e, cfg.prompt_template) for e in train],
                           [tasks.format_target(e, cfg.target_template) for e in train], max_length=None)
    t_train = sum(len(f["input_ids"]) for f in feats) / len(feats)
    # Training: 6N FLOPs a token, and attention's scores and mixing (4 T^2 hidden a layer) x 3 for backward.
    train_flops = 6 * n * t_train + 3 * 4 * mc.num_hidden_layers * t_train ** 2 * mc.hidden_size

    cur = curation.curation_params(cfg)
    examples = train[:128] + train[:64]  # a round-1 curation run's size
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sweep.finetune_on(cur, lm, tok, examples, tmp, run_grid.RunSpec("x", cur.curation_lr, 5, 1.0, 0), 5, 5)
        per_example_epoch = (time.perf_counter() - start) / (5 * len(examples))

    lm, tok = training.load_checkpoint(record.final_checkpoint(record.default_dir(cfg), RUN))
    prompts = [tasks.format_prompt(e, cfg.prompt_template) for e in test]
    start = time.perf_counter()
    answers = sampling.sample(lm, tok, prompts, k=cfg.k, max_new_tokens=cfg.max_new_tokens,
                              batch_size=cfg.sample_batch_size, progress=False)
    per_sample = (time.perf_counter() - start) / (len(prompts) * cfg.k)
    t_new = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for x in answers for a in x) / (len(prompts) * cfg.k)
    t_prompt = sum(len(tok(p)["input_ids"]) for p in prompts) / len(prompts)
    # A decoded token attends to its prompt's keys (stored once per k copies) and to half its answer on average.
    positions = t_prompt / cfg.k + t_new / 2
    kv_bytes = 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * 4 * positions
    token_flops = 2 * n + 4 * mc.num_hidden_layers * mc.hidden_size * positions
    # The cache read at the copy's rate of bytes in and out together: a generous floor for a read alone.
    sample_floor = t_new * (token_flops / flops + kv_bytes / copy)

    rows = [("training", counts["example_epochs"], "example-epochs", per_example_epoch, train_flops / flops),
            ("sampling", counts["samples"], "answers", per_sample, sample_floor)]
    print(f"one thread: matmul {flops / 1e9:.1f} GFLOP/s, copy {copy / 1e9:.1f} GB/s; base {n / 1e6:.2f}M "
          f"parameters; {t_train:.0f} tokens a training example, {t_new:.1f} sampled tokens an answer "
          f"(+{t_prompt:.0f} prompt)")
    print("| work | count | today, ms each | today, core-s | floor, ms each | floor, core-s |")
    print("|---|---|---|---|---|---|")
    for name, count, unit, today, floor in rows:
        print(f"| {name} | {count:,} {unit} | {today * 1e3:.1f} | {count * today:.0f} | {floor * 1e3:.1f} "
              f"| {count * floor:.0f} |")
    total, floor = sum(c * t for _, c, _, t, _ in rows), sum(c * f for _, c, _, _, f in rows)
    print(f"| both, on two busy cores | | | {total / 2 / 60:.1f} min | | {floor / 2 / 60:.1f} min |")


if __name__ == "__main__":
    main()
