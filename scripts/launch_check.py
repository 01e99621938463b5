"""Two launches of two ranks, one record: a torchrun launch of `premem sweep` and a submitit training
job of two tasks (launcher: slurm, submitit's local executor, beside a recording job), on the smoke
params cut to two runs of two epochs with stages: separate. Both train each run as one DDP group
(gloo on a CPU, nccl on GPUs) while one process records; their tables should be equal.

    python scripts/launch_check.py [--out /tmp/launch_check]

About 2 minutes on 2 CPU cores. Not a test: CI runs one launch of each kind (tests/test_stages.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_train=6, n_test=3, n_heldout=2, k=2, lrs=[1e-3, 1e-2], epochs=[2], data_fractions=[1.0],
             max_new_tokens=24, batch_size=4, workers=1, stages="separate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/launch_check")
    out = Path(ap.parse_args().out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text()) | SMALL | dict(cache_dir=str(out / "cache"))
    launches = dict(
        torchrun=(dict(), [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]),
        submitit=(dict(launcher="slurm", slurm_cluster="local", slurm_time=20, slurm_train_tasks=2), [sys.executable]))
    for name, (extra, command) in launches.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(params | extra))
        t0 = time.perf_counter()
        subprocess.run(command + ["-m", "premem", "sweep", "--params", str(out / f"{name}.yaml"), "--out",
                                  str(out / name), "--quiet"], check=True, env=os.environ.copy())
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    for table in ("samples", "perplexity", "checkpoints", "runs"):
        a, b = (pd.read_parquet(out / name / f"{table}.parquet") for name in launches)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        print(f"{table}: equal, {len(a)} rows")


if __name__ == "__main__":
    main()
