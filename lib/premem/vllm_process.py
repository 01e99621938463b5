"""Where vLLM's engine runs: on a CPU in the process that records, elsewhere in vLLM's own processes.

vLLM's default starts an engine process, which imports vLLM again and starts a worker process of its
own: on these CPUs 20-22 s before the first token, against 4-6 s for the same engine built in the
calling process (vLLM's VLLM_ENABLE_V1_MULTIPROCESSING=0), which also samples 1.4-1.6x faster (no
engine process polling a core while it waits) and gives the same samples (docs/engines.md). So
premem builds it here on a CPU (`in_process`), except
- on CUDA, where vLLM's default stays (the paper-scale path);
- where the environment sets VLLM_ENABLE_V1_MULTIPROCESSING (its choice wins, either way);
- in a process of a torch.distributed group: vLLM's worker would take the group as its own;
- on a machine of several NUMA memory nodes: vLLM's CPU worker binds its process's memory to one.

vLLM's CPU worker is made for a process of its own: it replaces torch.set_num_threads process-wide
with a no-op, seeds the global random generators, freezes the garbage collector's heap and caches
vLLM's environment variables, and the engine samples from the global torch generator (seeded
requests too). `starting_here` and `generators_kept` put each back, so the process goes on as it was.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
from pathlib import Path

import torch

from premem import rng

SWITCH = "VLLM_ENABLE_V1_MULTIPROCESSING"  # vLLM's: "0" builds the engine in the calling process
QUIETED = {"vllm.v1.worker.cpu_worker": "`torch.set_num_threads`", "vllm.engine.arg_utils": "global random seed"}


def in_process() -> bool:
    """Whether premem builds vLLM's engine in this process (see the module's docstring)."""
    if SWITCH in os.environ:  # the environment's choice, either way
        return os.environ[SWITCH].strip() == "0"
    if torch.cuda.is_available():
        return False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    return memory_nodes() <= 1


def memory_nodes(listed: Path = Path("/sys/devices/system/node/has_memory")) -> int:
    """NUMA nodes with memory, as Linux lists them ("0", "0-1", "0,2-3"); 1 where it does not say."""
    if not listed.is_file():
        return 1
    nodes = 0
    for part in listed.read_text().strip().split(","):
        first, _, last = part.partition("-")
        nodes += int(last or first) - int(first) + 1 if first else 0
    return max(nodes, 1)


@contextlib.contextmanager
def starting_here():
    """Build vLLM's engine inside this block in this process, and leave the process as it was."""
    import vllm.envs

    set_num_threads, threads, generators = torch.set_num_threads, torch.get_num_threads(), rng.state()
    logs = [logging.getLogger(name) for name in QUIETED]
    for log in logs:
        log.addFilter(_quiet)
    given = os.environ.get(SWITCH)
    os.environ[SWITCH] = "0"
    try:
        yield
    finally:
        if given is None:
            del os.environ[SWITCH]
        else:
            os.environ[SWITCH] = given
        for log in logs:
            log.removeFilter(_quiet)
        vllm.envs.disable_envs_cache()
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        rng.restore(generators)
        gc.unfreeze()


def _quiet(record: logging.LogRecord) -> bool:
    """Drop vLLM's warnings of what starting_here puts back: the worker's no-op, at each of vLLM's own
    later calls while the engine starts, and "the global random seed ... may affect the random state
    of the Python process"."""
    return not any(words in record.getMessage() for words in QUIETED.values())


@contextlib.contextmanager
def generators_kept(llm):
    """The process's random generators as they were after this block, where `llm`'s engine runs in
    this process (vLLM's in-process client); a no-op for an engine in processes of its own."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    with rng.kept() if type(core).__name__ == "InprocClient" else contextlib.nullcontext():
        yield
