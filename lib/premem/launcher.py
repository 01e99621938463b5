"""Where a sweep's runs execute: here (`launcher: local`, worker processes of one torch thread), or
as jobs through submitit (`launcher: slurm`): Slurm where `sbatch` is, submitit's own local
executor (a real subprocess per job, real pickling) where it is not or `slurm_cluster: local` says
so. With `stages: together` a job per run trains and records it. With `stages: separate` a
training job per run (of `slurm_train_tasks` processes, one per GPU by default: a multi-GPU job
trains as a torchrun launch would) runs beside a recording job per run, which records each
checkpoint as training saves it (premem.stages). A job killed by preemption or its time limit is
requeued by submitit; rerunning a run resumes it (finished checkpoints and recorded parts stay),
so nothing recorded is lost.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from premem.errors import PremError, terminated

LAUNCHERS = ("local", "slurm")


class Job:
    """A run as a submitit job: a picklable callable that submitit requeues on preemption."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        _as_rank()
        # On a CPU node each job keeps to one torch thread, as local workers do; on a GPU node, all.
        return _at_one_thread(self.fn, args) if not torch.cuda.is_available() else self.fn(*args)

    def checkpoint(self, *args):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)  # the same run again: it resumes


def _as_rank() -> None:
    """In a Slurm job of several tasks, make this task a rank of the job's torch group (env://)."""
    if int(os.environ.get("SLURM_NTASKS", os.environ.get("SUBMITIT_LOCAL_NTASKS", "1"))) > 1 \
            and "RANK" not in os.environ:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@dataclass
class Array:
    """One job array: fn(*a) for each a in args. role train: the jobs whose ends nobody counts (a
    run is done when its recording job is); record: a single process each, with slurm_record_gpus."""
    fn: object
    args: list
    role: str = "run"


def submitit_module():
    try:
        import submitit
    except ImportError:
        raise PremError("launcher: slurm runs jobs through submitit, which is not installed (pip install submitit)") \
            from None
    return submitit


def executor(cfg, folder: str | Path, role: str = "run"):
    """A submitit executor with the params' slurm_* resources for jobs of `role`; logs go to `folder`."""
    submitit = submitit_module()
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cfg.slurm_cluster)
    gpus, tasks = cfg.slurm_gpus, None
    if role == "train":
        tasks = cfg.slurm_train_tasks or gpus or 1  # a process per GPU, as torchrun starts them
    elif role == "record":  # one engine's process; vLLM serves an 8B model from one GPU
        gpus = cfg.slurm_record_gpus if cfg.slurm_record_gpus is not None else (min(gpus, 1) if gpus else None)
    options = dict(name=f"premem-{cfg.name}-{role}", timeout_min=cfg.slurm_time, gpus_per_node=gpus,
                   tasks_per_node=tasks, slurm_partition=cfg.slurm_partition, cpus_per_task=cfg.slurm_cpus,
                   mem_gb=cfg.slurm_mem_gb)
    ex.update_parameters(**{k: v for k, v in options.items() if v is not None})
    return ex


def run_arrays(cfg, arrays: list[Array], folder: str | Path, on_done=None, poll_s: float = 2.0) -> None:
    """Submit every array, then wait for all their jobs together, calling on_done(result) as each
    counted job ends (in any order); the first failed job cancels the rest (no job may go on writing
    once the sweep has stopped and let its lock go) and its error is raised, naming its log folder."""
    jobs = []
    for array in arrays:
        if array.args:
            submitted = executor(cfg, folder, array.role).map_array(Job(array.fn), *zip(*array.args))
            jobs += [(job, array.role != "train") for job in submitted]
    pending = list(jobs)
    try:
        while pending:
            for job, counted in [p for p in pending if p[0].done()]:
                pending.remove((job, counted))
                try:
                    result = job.results()[0]  # a job of several tasks (ranks) has a result per task: rank 0's
                except Exception as e:  # submitit's FailedJobError carries the job's own traceback
                    last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                    raise PremError(f"job {job.job_id} failed (logs in {folder}): {last}") from e
                if counted and on_done is not None:
                    on_done(result)
            if pending:
                time.sleep(poll_s)
    except BaseException:  # a failed job, or the sweep itself stopped (Ctrl-C, its own job's end)
        for other, _ in pending:
            other.cancel(check=False)
        raise


def _at_one_thread(fn, args):
    torch.set_num_threads(1)
    quiet_libraries()
    try:
        return fn(*args)
    except SystemExit as e:
        if multiprocessing.parent_process() is None:
            raise
        # A pool worker stopped by stop_workers' SIGTERM: the job has unwound (its temporaries are
        # gone); end the process now, or the pool's worker loop would report the exit as the job's
        # result and wait for another job until the grace period's SIGKILL.
        os._exit(e.code if isinstance(e.code, int) else 1)


def map_one_thread(fn, args: list[tuple], workers: int, on_done=None) -> list:
    """[fn(*a) for a in args], each at one torch thread: in `workers` spawned processes (for
    ~1M-parameter models far faster than one process with several threads), or here with one worker
    or one job. Float reductions, hence weights and samples, then do not depend on the worker count.
    `fn` must be importable (module level); on_done(result) is called as each job finishes."""
    if workers == 1 or len(args) < 2:
        threads = torch.get_num_threads()
        results = []
        try:
            for a in args:
                results.append(_at_one_thread(fn, a))
                if on_done is not None:
                    on_done(results[-1])
        finally:
            torch.set_num_threads(threads)
        return results
    with worker_pool(min(workers, len(args))) as pool:
        futures = [pool.submit(_at_one_thread, fn, a) for a in args]
        for f in as_completed(futures):
            if on_done is not None:
                on_done(f.result())
        return [f.result() for f in futures]


def run_graph(fn, nodes: dict, workers: int, on_done=None) -> None:
    """fn(*args) for each node {key: (args, after)}, once every node in `after` has finished, at one
    torch thread each: in `workers` spawned processes, or here with one worker. Both cores stay busy
    while any node can run (no round waits for its slowest job); at most `workers` nodes run at a
    time, and a free worker takes the first ready node in `nodes`' order (the caller's priority).
    on_done(key, result) is called here as each finishes; the first error is raised."""
    missing = {a for _, after in nodes.values() for a in after} - set(nodes)
    if missing:
        raise PremError(f"run_graph: nodes come after nodes that are not in the graph: {sorted(missing)[:3]}")
    pending, finished, running = dict(nodes), set(), {}
    if not pending:
        return

    def ready():
        return [key for key, (_, after) in pending.items() if finished.issuperset(after)]

    def finish(key, result):
        finished.add(key)
        if on_done is not None:
            on_done(key, result)

    if workers == 1:
        threads = torch.get_num_threads()
        try:
            while pending:
                key = next(iter(ready()), None)
                if key is None:
                    raise PremError(f"run_graph: a cycle among {sorted(map(str, pending))[:3]}")
                finish(key, _at_one_thread(fn, pending.pop(key)[0]))
        finally:
            torch.set_num_threads(threads)
        return
    with worker_pool(workers) as pool:
        while pending or running:
            for key in ready()[:workers - len(running)]:
                running[pool.submit(_at_one_thread, fn, pending.pop(key)[0])] = key
            if not running:
                raise PremError(f"run_graph: a cycle among {sorted(map(str, pending))[:3]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finish(running.pop(future), future.result())


def quiet_libraries() -> None:
    """Keep worker output to our own progress bars: no per-save bars or backend notices."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("bitsandbytes", "math_verify", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def spawn_context():
    """Worker processes start fresh (spawn): forking a process whose torch thread pool has run can hang."""
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def worker_pool(workers: int, initializer=None):
    """A pool of `workers` spawned processes that ends with its caller: when the caller stops (an
    error, Ctrl-C, a SIGTERM that the command turned into SystemExit) no worker goes on. A plain
    pool's exit would wait for the jobs it runs: a lone SIGTERM to the parent (`timeout`, some
    schedulers) left both workers training to the end of their runs."""
    pool = ProcessPoolExecutor(workers, mp_context=spawn_context(), initializer=initializer or die_with_parent,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def stop_workers(pool: ProcessPoolExecutor, grace_s: float = 10.0) -> None:
    """Cancel what has not started and end the workers: SIGTERM first (each unwinds as the command
    does, its atomic writes removing their temporaries), SIGKILL for one still there after grace_s."""
    workers = list((pool._processes or {}).values())  # noqa: SLF001 (the pool has no public handle on them)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in workers:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def die_with_parent(parent: int) -> None:
    """A worker's start: end when `parent` (the pid that spawned it) ends, and unwind on SIGTERM
    (the pool's stop_workers). A pool's worker holds both ends of its task queue, so it never sees
    its parent go (killed, say, or preempted): it would wait forever, holding its memory, GPU
    memory included."""
    signal.signal(signal.SIGTERM, terminated)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="premem-parent").start()


def _watch_parent(parent: int) -> None:
    # An orphan is given a new parent (init, or a subreaper), also one whose parent was gone before
    # this thread began.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


# What torchrun, accelerate and submitit set to make a process one rank of a group.
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
              "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS")
RENDEZVOUS_PREFIXES = ("TORCHELASTIC_", "ACCELERATE_", "FSDP_")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _alone(parent: int) -> None:
    """A spawned process's start: not a rank of its parent's launch (else joining the parent's
    process group would wait for ranks that never come), and gone when its parent is."""
    die_with_parent(parent)
    for name in list(os.environ):
        if name in RENDEZVOUS or name.startswith(RENDEZVOUS_PREFIXES):
            del os.environ[name]


def in_fresh_process(fn, args: tuple) -> None:
    """fn(*args) in a new spawned process of its own (one torch thread on a CPU), waited for; its
    error is raised here."""
    with worker_pool(1, initializer=_alone) as pool:
        pool.submit(Job(fn), *args).result()
