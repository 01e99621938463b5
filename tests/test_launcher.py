"""launcher: slurm through submitit, run here by submitit's local executor (a real subprocess per
job, real pickling of the job and its arguments): the same record as the in-process sweep."""
import sys
from pathlib import Path

import pandas as pd
import pytest

from premem import launcher, sweep
from premem.config import load_params
from premem.errors import PremError

SMOKE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"
SMALL = dict(n_train=6, n_test=3, n_heldout=2, k=2, lrs=[1e-3, 1e-2], epochs=[1], data_fractions=[1.0],
             max_new_tokens=24, workers=1)


def test_submitit_jobs_make_the_same_record(tmp_path):
    here = sweep.sweep(load_params(SMOKE, cache_dir=str(tmp_path / "cache"), **SMALL), out=tmp_path / "here",
                       progress=False)
    cfg = load_params(SMOKE, cache_dir=str(tmp_path / "cache"), launcher="slurm", slurm_cluster="local",
                      slurm_time=10, **SMALL)
    jobs = sweep.sweep(cfg, out=tmp_path / "jobs", progress=False)
    for table in ("samples", "perplexity", "checkpoints", "runs"):
        pd.testing.assert_frame_equal(pd.read_parquet(here / f"{table}.parquet"),
                                      pd.read_parquet(jobs / f"{table}.parquet"), check_exact=True)
    # One job per run, each with its submitit log folder beside the record.
    assert len(list((jobs / "jobs").glob("*_result.pkl"))) == len(sweep.grid(cfg)) == 2


def test_a_requeued_job_is_the_same_run_again():
    job = launcher.Job(sweep._run_job)
    again = job.checkpoint("cfg", "spec", "train")
    assert again.function is job and again.args == ("cfg", "spec", "train")


def test_launcher_input_is_checked_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(PremError, match="key 'slurm_partition': slurm_\\* options apply to launcher: slurm"):
        load_params(dict(slurm_partition="gpu"))
    with pytest.raises(PremError, match="key 'launcher'"):
        load_params(dict(launcher="kubernetes"))
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    cfg = load_params(SMOKE, launcher="slurm", out_dir=str(tmp_path))
    with pytest.raises(PremError, match="submitit, which is not installed"):
        sweep.sweep(cfg, progress=False)
    assert not any(tmp_path.iterdir())  # nothing made


def test_fsdp_needs_separate_stages(tmp_path, monkeypatch):
    """Under accelerate's FSDP a process holds a shard: recording inside training is refused before
    any work, and the shipped accelerate config is FSDP as the authors trained."""
    import yaml

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(PremError, match="stages: under FSDP .* set stages: separate"):
        sweep.sweep(load_params(SMOKE, out_dir=str(tmp_path)), progress=False)
    assert not any(tmp_path.iterdir())
    config = yaml.safe_load((SMOKE.parents[1] / "configs" / "accelerate_fsdp.yaml").read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # whole checkpoints to record
