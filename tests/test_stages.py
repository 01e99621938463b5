"""Training and recording as separate stages (premem.stages), one run of the smoke params recorded
by the launches premem offers, each against the same record made inside training: a recording job
beside a training job (submitit's local executor), a recorder in a fresh process that records a
checkpoint as it appears, and two torchrun ranks that train as one while rank 0 records."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from spawned import assert_alone

from premem import data as data_lib
from premem import bases, launcher, record, run_grid, stages, sweep
from premem.config import load_params
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
# One run of two epochs, a batch of 4 (2 per rank on two ranks): 2 optimiser steps per epoch.
SMALL = dict(n_train=6, n_test=3, n_heldout=2, k=2, lrs=[1e-2], epochs=[2], data_fractions=[1.0],
             max_new_tokens=24, batch_size=4, workers=1)
TABLES = ("samples", "perplexity", "checkpoints", "runs")


def small(cache, **overrides):
    return load_params(SMOKE, cache_dir=str(cache), **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def together(tmp_path_factory):
    """(cache folder, record) of the run recorded inside training, in this process."""
    tmp = tmp_path_factory.mktemp("together")
    return tmp / "cache", sweep.sweep(small(tmp / "cache"), out=tmp / "record", progress=False)


def assert_same_tables(a: Path, b: Path) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{table}.parquet"), pd.read_parquet(b / f"{table}.parquet"),
                                      check_exact=True)


def mtimes(run: Path) -> dict:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in (run / "train").glob("checkpoint-*/*")}


def test_separate_stages_record_checkpoints_as_they_appear(together, tmp_path, monkeypatch):
    """stages: separate under launcher: slurm (submitit's local executor: real subprocesses, real
    pickling): a training job and beside it a recording job; the record is the one made inside
    training. Then, back at the moment the first checkpoint was saved, a recorder here (its
    checkpoint in a fresh process) waits, records the second checkpoint once it appears and stops
    when the run is marked trained; an in-process sweep finishes the run without training it
    again. (With stages: together one job per run trains and records it: the same Job and
    run_arrays, one array.)"""
    cache, reference = together
    cfg = small(cache, stages="separate", launcher="slurm", slurm_cluster="local", slurm_time=10)
    assert cfg.hash() == small(cache).hash()  # the same record, so the same name
    out = sweep.sweep(cfg, out=tmp_path / "jobs", progress=False)
    assert_same_tables(reference, out)
    jobs = {f.name.split("_")[0] for f in (out / "jobs").glob("*_submitted.pkl")}
    assert len(jobs) == 2 and len(list((out / "jobs").glob("*_result.pkl"))) == 2
    (run,) = (out / "runs").iterdir()
    assert record.is_done(run) and stages.trained_steps(run) == [2, 4]
    # Back to the moment the first checkpoint was saved: the second is not there yet, nor its parts.
    trained = mtimes(run)
    aside = tmp_path / "checkpoint-4"
    (run / "train" / "checkpoint-4").rename(aside)
    (run / "train" / stages.TRAINED).unlink()
    dropped = sorted((run / "parts").glob("*-00000004.parquet"))
    for f in dropped:
        f.unlink()
    (run / "done.json").unlink()
    here = small(cache, stages="separate")
    (spec,) = run_grid.grid(here)
    train, test, held = data_lib.load_examples(here, heldout=True)
    result = {}
    monkeypatch.setattr(stages, "POLL_S", 0.5)
    recorder = threading.Thread(target=lambda: result.update(steps=stages.record_run(
        here, spec, run_grid.train_subset(train, spec), test, held, out, bases.base_model_path(here, progress=False),
        wait=True)))
    recorder.start()
    time.sleep(3 * stages.POLL_S)
    assert recorder.is_alive() and not any(f.exists() for f in dropped)  # waiting for training
    aside.rename(run / "train" / "checkpoint-4")
    stages.mark_trained(run, [2, 4])
    recorder.join(timeout=300)
    assert result["steps"] == [2, 4] and all(f.is_file() for f in dropped)
    sweep.sweep(here, out=out, progress=False)  # finishes the run: recorded, not retrained
    assert record.is_done(run) and mtimes(run) == trained
    assert_same_tables(reference, out)


def test_torchrun_ranks_train_as_one_and_rank_0_records(together, tmp_path):
    """Two torchrun processes on a CPU (gloo): they train as one group (2 steps an epoch, where a rank
    alone would take 3) while rank 0 alone records, in a process outside the group; both end."""
    cache, reference = together
    params = yaml.safe_load(SMOKE.read_text()) | SMALL | dict(cache_dir=str(cache), stages="separate")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in launcher.RENDEZVOUS}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "premem", "sweep", "--params", str(tmp_path / "p.yaml"), "--out",
                           str(tmp_path / "ranks"), "--quiet"], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "ranks"
    (run,) = (out / "runs").iterdir()
    assert stages.trained_steps(run) == [2, 4] and record.is_done(run)
    for table in TABLES:  # every row once: one recorder, the same rows as one process makes
        got, want = pd.read_parquet(out / f"{table}.parquet"), pd.read_parquet(reference / f"{table}.parquet")
        key = [c for c in ("run", "step", "split", "example_id", "sample_idx") if c in want]
        pd.testing.assert_frame_equal(got[key], want[key])


def test_recording_inside_training_is_refused_under_several_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PremError, match="stages: training here is split over ranks \\(2 processes\\).* set stages: separate"):
        sweep.sweep(load_params(SMOKE, out_dir=str(tmp_path)), progress=False)
    with pytest.raises(PremError, match="launcher: slurm submits jobs of its own .* one of 2 processes"):
        sweep.sweep(load_params(SMOKE, out_dir=str(tmp_path), stages="separate", launcher="slurm"), progress=False)
    assert not any(tmp_path.iterdir())


def test_a_fresh_process_is_no_rank_of_its_parent(monkeypatch, tmp_path):
    for name, value in dict(RANK="0", WORLD_SIZE="2", MASTER_PORT="29500", TORCHELASTIC_RUN_ID="x",
                            ACCELERATE_USE_FSDP="true").items():
        monkeypatch.setenv(name, value)
    launcher.in_fresh_process(assert_alone, ())
    # A rank waiting on a run that rank 0 failed to record stops, saying why.
    stages.mark_failed(tmp_path, ValueError("no"))
    with pytest.raises(PremError, match="rank 0 failed to record it: ValueError: no"):
        stages.wait_until_done(tmp_path)


def test_a_fresh_process_ends_with_its_parent(tmp_path):
    """A recording process whose parent is killed (kill -9, a preempted job) does not linger with
    its memory: a pool's worker would otherwise wait for work forever."""
    told = tmp_path / "pid"
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import spawned; from premem import launcher; "
            f"launcher.in_fresh_process(spawned.tell_and_sleep, ({str(told)!r},))")
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while not told.exists() and time.time() < deadline:
        time.sleep(0.2)
    child = int(told.read_text())
    parent.kill()
    parent.wait()
    deadline = time.time() + 15
    while _alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False

