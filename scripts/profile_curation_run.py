"""Two of the CPU default's curation runs profiled by phase, at one thread as a curation worker runs
them: round 0's originals run (5 epochs on 128 examples, recorded at 3 checkpoints for the rules that
read history) and a round-1 sized run recorded at its last checkpoint alone (128 + 64 examples).

    .venv/bin/python scripts/profile_curation_run.py     # about a minute; prints seconds by phase

Not a test: docs/speed.md carries one run's numbers.
"""
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
import torch
from premem import baselines, curation, grading, perplexity, record_folder, run_grid, sampling, sweep, training
from premem import data as data_lib
from premem.config import load_params

PH = {"training": training.finetune, "sampling": sampling.sample, "perplexity": perplexity.target_nll,
      "grading": grading.grade_many, "baselines": baselines.gradient_variance}

def prof(fn, *a, **k):
    p = cProfile.Profile(); t = time.perf_counter(); p.runcall(fn, *a, **k); total = time.perf_counter() - t
    st = pstats.Stats(p).stats
    out = {"total": total}
    for n, f in PH.items():
        c = f.__code__
        out[n] = sum(v[3] for kk, v in st.items() if kk[0] == c.co_filename and kk[1] == c.co_firstlineno)
    out["training"] -= out["sampling"] + out["perplexity"] + out["grading"] + out["baselines"]
    out["other"] = total - sum(out[n] for n in PH)
    return {k: round(v, 1) for k, v in out.items()}

if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = curation.curation_params(load_params("params/tiny.yaml"))
    originals, test, held = data_lib.load_examples(cfg, heldout=True)
    base = sweep.base_model_path(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cur"
        record_folder.create(folder, cfg)
        lr, ep = cfg.curation_lr, cfg.curation_epochs
        r0 = run_grid.RunSpec("originals_seed0", lr, ep, 1.0, 0)
        print("round 0 (originals, history)", len(originals),
              prof(sweep.train_and_record, cfg, r0, originals, test, folder, base, held, recorded=originals,
                   test_final_only=True), flush=True)
        r1 = run_grid.RunSpec("iid_r1_seed0", lr, ep, 1.0, 0)
        train1 = originals + originals[:64]  # a round-1 run's size: originals + 64 collected
        print("round 1 (final only)", len(train1),
              prof(sweep.train_and_record, cfg, r1, train1, test, folder, base, held, recorded=originals,
                   test_final_only=True, final_only=True), flush=True)
