"""Checkpoint folders: what a finished one holds, how they are listed, and what a trainer's
metadata says, read without running anything from the folder.

premem's own training marks a checkpoint finished with MARKER, written last (a folder without it
was cut off and is redone, in an output_dir premem trains in: OWN_FOLDER). Another trainer's
`checkpoint-<step>` folders (the HF Trainer, TRL; a full model or a LoRA adapter) are listed one
folder a step and read through JSON (trainer_state.json) and an allowlisted unpickler
(training_args.bin), never a bare unpickle.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from premem.errors import PremError
from premem.io import read_json

MARKER = "premem_checkpoint.json"  # written last: a checkpoint without it is unfinished
OWN_FOLDER = ".premem-training"  # in every output_dir premem trains in: its unmarked checkpoints are its own
RESUME_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "optimizer.bin")  # optimizer.bin: under FSDP
# A checkpoint's weights, however saved: one file, shards with their index, an adapter, FSDP's own.
WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json",
                   "adapter_model.safetensors", "adapter_model.bin", "pytorch_model_fsdp*.bin")


def weight_files(folder) -> list[Path]:
    """The files of a checkpoint folder that hold its weights (WEIGHT_PATTERNS)."""
    return sorted({f for pattern in WEIGHT_PATTERNS for f in Path(folder).glob(pattern) if f.is_file()})


def finished_checkpoints(output_dir) -> list[dict]:
    """The finished checkpoints in output_dir, by step: dicts with step, epoch, path, loss."""
    out = []
    for marker in Path(output_dir).glob(f"checkpoint-*/{MARKER}"):
        try:  # written atomically; it may still vanish under a reader (a run trained again from its start)
            rec = json.loads(marker.read_text())
        except FileNotFoundError:
            continue
        out.append({**rec, "path": marker.parent})
    return sorted(out, key=lambda r: r["step"])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The checkpoint-<step> folders of a run, by step: one folder a step (checkpoint-5 beside
    checkpoint-05 is one error, not two measurements of step 5)."""
    dirs = [d for d in Path(run_dir).iterdir() if d.is_dir() and re.fullmatch(r"checkpoint-\d+", d.name)]
    dirs = sorted(dirs, key=lambda d: (int(d.name.split("-")[1]), d.name))
    for a, b in zip(dirs, dirs[1:]):
        if int(a.name.split("-")[1]) == int(b.name.split("-")[1]):
            raise PremError(f"{run_dir}: {a.name} and {b.name} are both step {int(a.name.split('-')[1])}: one folder "
                            "a step (remove or rename one)")
    return dirs


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def existing_checkpoint_dirs(folder: str | Path, what: str) -> list[Path]:
    """checkpoint_dirs of a folder that must hold some (`what` names it in the error)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PremError(f"{what} not found: {folder}")
    dirs = checkpoint_dirs(folder)
    if not dirs:
        raise PremError(f"no checkpoint-<step> folders in {folder}")
    return dirs


def checkpoint_folders(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-<step> folder a trainer saved in `folder`, by step."""
    return [(int(d.name.split("-")[1]), d) for d in checkpoint_dirs(folder)] if Path(folder).is_dir() else []


def saved_checkpoints(folder: str | Path, select: str = "all") -> list[dict]:
    """The `checkpoint-<step>` folders a trainer saved, by step, that `select` names ("all", a list
    "100,200", or an inclusive step range "100-300"): dicts of step, epoch, path and kind (model
    or adapter). Each is checked before anything is recorded."""
    found = [(int(d.name.split("-")[1]), d) for d in existing_checkpoint_dirs(folder, "checkpoints folder")]
    steps = [s for s, _ in found]
    chosen = _select(steps, select)
    out = []
    for step, path in found:
        if step not in chosen:
            continue
        if (path / "adapter_config.json").is_file() and any((path / f).is_file() for f in ADAPTER_FILES):
            kind = "adapter"
        elif (path / "config.json").is_file() and weight_files(path):
            kind = "model"
        else:
            raise PremError(f"{path}: neither a model (config.json and weights) nor a LoRA adapter "
                            "(adapter_config.json and adapter weights)")
        epoch = state_number(path, "epoch")
        epoch = np.nan if epoch is None else round(epoch, 4)
        out.append(dict(step=step, epoch=epoch, path=path, kind=kind))
    return out


def state_number(checkpoint: Path, key: str) -> float | None:
    """A number from the checkpoint's trainer_state.json (None: no file or no such key); any other
    value is one error naming the file and key."""
    state = Path(checkpoint) / "trainer_state.json"
    value = read_json(state).get(key) if state.is_file() else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PremError(f"{state}: '{key}' must be a non-negative number, got {value!r}"[:200])
    return float(value)


def _select(steps: list[int], select: str) -> set[int]:
    text = str(select).strip()
    if text == "all":
        return set(steps)
    try:
        if re.fullmatch(r"\d+\s*-\s*\d+", text):
            lo, hi = (int(x) for x in text.split("-"))
            chosen = {s for s in steps if lo <= s <= hi}
        else:
            chosen = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise PremError(f"--checkpoints: {select!r} is not 'all', a list of steps (100,200) or a range (100-300)") \
            from None
    missing = sorted(chosen - set(steps))
    if missing or not chosen:
        raise PremError(f"--checkpoints {select}: no checkpoint at step {missing or '(none chosen)'}; "
                        f"saved steps: {', '.join(map(str, steps))}")
    return chosen


