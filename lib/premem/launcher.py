"""Where a sweep's runs execute: here (`launcher: local`, worker processes of one torch thread), or
as one job per run through submitit (`launcher: slurm`): Slurm where `sbatch` is, submitit's own
local executor (a real subprocess per job, real pickling) where it is not or `slurm_cluster: local`
says so. A job killed by preemption or its time limit is requeued by submitit; rerunning a run
resumes it (finished checkpoints and recorded parts stay), so nothing recorded is lost.
"""
from __future__ import annotations

from pathlib import Path

from premem.errors import PremError

LAUNCHERS = ("local", "slurm")


class Job:
    """A run as a submitit job: a picklable callable that submitit requeues on preemption."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        import torch

        from premem.sweep import _at_one_thread

        # On a CPU node each job keeps to one torch thread, as local workers do; on a GPU node, all.
        return _at_one_thread(self.fn, args) if not torch.cuda.is_available() else self.fn(*args)

    def checkpoint(self, *args):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)  # the same run again: it resumes


def submitit_module():
    try:
        import submitit
    except ImportError:
        raise PremError("launcher: slurm runs jobs through submitit, which is not installed (pip install submitit)") \
            from None
    return submitit


def executor(cfg, folder: str | Path):
    """A submitit executor with the params' slurm_* resources; its logs go to `folder`."""
    submitit = submitit_module()
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cfg.slurm_cluster)
    options = dict(name=f"premem-{cfg.name}", timeout_min=cfg.slurm_time, gpus_per_node=cfg.slurm_gpus,
                   slurm_partition=cfg.slurm_partition, cpus_per_task=cfg.slurm_cpus, mem_gb=cfg.slurm_mem_gb)
    ex.update_parameters(**{k: v for k, v in options.items() if v is not None})
    return ex


def run_array(cfg, fn, args: list[tuple], folder: str | Path, on_done=None) -> list:
    """fn(*a) for each a in args as one job array; waits for every job, calling on_done(result) as
    each finishes in order; the first failed job's error is raised, naming its log folder."""
    if not args:
        return []
    ex = executor(cfg, folder)
    jobs = ex.map_array(Job(fn), *zip(*args))
    results = []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as e:  # submitit's FailedJobError carries the job's own traceback
            for other in jobs:  # no job may go on writing once the sweep has stopped and let its lock go
                other.cancel(check=False)
            last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise PremError(f"job {job.job_id} failed (logs in {folder}): {last}") from e
        if on_done is not None:
            on_done(results[-1])
    return results
