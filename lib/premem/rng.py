"""The process's random generators (Python's, numpy's, torch's and CUDA's), kept across a block that
draws from them or reseeds them: recording in the middle of training, vLLM's engine in this process."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def state() -> tuple:
    return (random.getstate(), np.random.get_state(), torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def restore(saved: tuple) -> None:
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.set_rng_state(saved[2])
    if saved[3] is not None:
        torch.cuda.set_rng_state_all(saved[3])


@contextlib.contextmanager
def kept():
    """Every generator after this block as it was before it."""
    saved = state()
    try:
        yield
    finally:
        restore(saved)
