"""launcher: slurm's parts and its input checks (its records: tests/test_stages.py); run_graph, the curation's scheduler."""
import os
import sys
from pathlib import Path

import pytest
from spawned import node

from premem import launcher, sweep
from premem.config import load_params
from premem.errors import PremError

SMOKE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"


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
    with pytest.raises(PremError, match="stages: training here is split over ranks \\(FSDP: .* set stages: separate"):
        sweep.sweep(load_params(SMOKE, out_dir=str(tmp_path)), progress=False)
    assert not any(tmp_path.iterdir())
    config = yaml.safe_load((SMOKE.parents[1] / "configs" / "accelerate_fsdp.yaml").read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # whole checkpoints to record


def test_sbatch_scripts_ask_for_what_the_params_say(tmp_path, monkeypatch):
    """The sbatch headers submitit would submit (a stand-in srun makes it believe it is on Slurm): a
    training job of a rank per GPU, a recording job of one GPU, time and partition from the params,
    and the signal before the time limit that requeues a job."""
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    cfg = load_params(SMOKE, launcher="slurm", slurm_cluster="slurm", slurm_gpus=4, slurm_time=600,
                      slurm_partition="gpu", slurm_mem_gb=64, stages="separate")
    header = {}
    for role in ("train", "record"):
        text = launcher.executor(cfg, tmp_path / "jobs", role)._executor._make_submission_file_text("python", "0")
        header[role] = {line.split("=")[0][len("#SBATCH "):]: line.split("=", 1)[1]
                        for line in text.splitlines() if line.startswith("#SBATCH --") and "=" in line}
    assert {k: header["train"][k] for k in ("--gpus-per-node", "--ntasks-per-node", "--partition", "--time",
                                            "--mem")} == {"--gpus-per-node": "4", "--ntasks-per-node": "4",
                                                          "--partition": "gpu", "--time": "600", "--mem": "64GB"}
    assert header["record"]["--gpus-per-node"] == "1" and "--ntasks-per-node" not in header["record"]
    assert all(h["--signal"].startswith("USR2@") for h in header.values())  # submitit's requeue signal


def test_run_graph_starts_a_node_when_what_it_reads_is_done_not_when_a_round_is(tmp_path):
    """a -> c -> d beside a long b: in rounds d would wait for b; here both workers stay busy and d
    ends first. on_done sees every node's result once."""
    log, seen = tmp_path / "log", []
    nodes = {"b": ((str(log), "b", 3.0), ()), "a": ((str(log), "a", 0.1), ()),
             "c": ((str(log), "c", 0.1), ("a",)), "d": ((str(log), "d", 0.1), ("c",))}
    launcher.run_graph(node, nodes, 2, lambda key, result: seen.append((key, result)))
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [key for key, _ in lines] == ["a", "c", "d", "b"]
    assert len({pid for _, pid in lines}) == 2 and str(os.getpid()) not in {pid for _, pid in lines}
    assert sorted(seen) == [(k, k.upper()) for k in "abcd"]


def test_run_graph_here_follows_the_order_and_stops_at_errors_and_cycles(tmp_path):
    log = tmp_path / "log"
    nodes = {"c": ((str(log), "c", 0), ("a",)), "b": ((str(log), "b", 0), ()), "a": ((str(log), "a", 0), ())}
    launcher.run_graph(node, nodes, 1)
    assert log.read_text().split()[::2] == ["b", "a", "c"]  # the first ready node in the caller's order
    with pytest.raises(ValueError, match="node bad failed"):
        launcher.run_graph(node, {"bad": ((str(log), "bad", 0), ()), "after": ((str(log), "x", 0), ("bad",))}, 1)
    assert "x" not in log.read_text().split()
    with pytest.raises(PremError, match="cycle"):
        launcher.run_graph(node, {"p": ((str(log), "p", 0), ("q",)), "q": ((str(log), "q", 0), ("p",))}, 1)
    with pytest.raises(PremError, match="not in the graph"):
        launcher.run_graph(node, {"p": ((str(log), "p", 0), ("nowhere",))}, 1)
