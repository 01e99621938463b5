"""Two of the CPU default's curation runs profiled by phase, at one thread as a curation worker runs
them: round 0's originals run (5 epochs on 128 examples, recorded at 3 checkpoints for the rules that
read history) and a round-1 sized run recorded at its last checkpoint alone (128 + 64 examples).

    .venv/bin/python scripts/profile_curation_run.py     # about a minute; prints seconds by phase

Not a test: docs/speed.md carries one run's numbers.
"""
import sys
import tempfile
from pathlib import Path

import torch

from premem import bases, curation, record_folder, run_grid, sweep
from premem import data as data_lib
from premem.config import load_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_reproduce import by_phase  # noqa: E402


def prof(fn, *args, **kwargs) -> dict:
    return {k: round(v, 1) for k, v in by_phase(fn, *args, **kwargs).items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = curation.curation_params(load_params("params/tiny.yaml"))
    originals, test, held = data_lib.load_examples(cfg, heldout=True)
    base = bases.base_model_path(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cur"
        record_folder.create(folder, cfg)
        lr, ep = cfg.curation_lr, cfg.curation_epochs
        r0 = run_grid.RunSpec("originals_seed0", lr, ep, 1.0, 0)
        print("round 0 (originals, history)", len(originals),
              prof(sweep.train_and_record, cfg, r0, originals, test, folder, base, held, recorded=originals,
                   recording=curation.RECORDING), flush=True)
        r1 = run_grid.RunSpec("iid_r1_seed0", lr, ep, 1.0, 0)
        train1 = originals + originals[:64]  # a round-1 run's size: originals + 64 collected
        print("round 1 (final only)", len(train1),
              prof(sweep.train_and_record, cfg, r1, train1, test, folder, base, held, recorded=originals,
                   recording=curation.RECORDING, final_only=True), flush=True)
