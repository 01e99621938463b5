"""Progress bars a person can read while worker processes do the work.

A stage's bar counts checkpoints, not runs: a thread in the parent counts what the workers have
written to disk (a checkpoint is done when its samples part is), so the bar moves, with its rate
and time left, as each checkpoint of each run is recorded, whichever process recorded it. tqdm.auto
draws it as text in a terminal and as a widget in JupyterLab (ipywidgets).
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

POLL_S = 1.0  # how often the bar looks at the disk


def saves(epochs: int, save_every: int) -> int:
    """Checkpoints a run of `epochs` saves every `save_every` epochs (and at its last), as
    training.finetune saves them."""
    return len({e for e in range(1, epochs + 1) if e % save_every == 0} | {epochs})


def recorded_checkpoints(record_dir: str | Path, runs) -> int:
    """Checkpoints of `runs` recorded so far: their samples parts (each checkpoint's last write)."""
    return sum(1 for run in runs for _ in Path(record_dir, "runs", run, "parts").glob("samples-*.parquet"))


@contextlib.contextmanager
def counting(bar, count, every: float = POLL_S):
    """Keep `bar` at `count()` (what is done, as the disk says) while the block runs, and once more
    at its end; the bar's own clock gives the rate and the time left."""
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(every):
            _move(bar, count())

    watcher = threading.Thread(target=follow, daemon=True, name="premem-progress")
    watcher.start()
    try:
        yield bar
    finally:
        stop.set()
        watcher.join()
        _move(bar, count())


def _move(bar, n: int) -> None:
    if n > bar.n:
        bar.update(n - bar.n)
