"""Training and recording as separate stages (`stages: separate`), as the paper's scale needs.

A run's training process saves a checkpoint per epoch and records nothing, then marks the run
trained. Its checkpoints are recorded in a fresh process, so a recorder never shares a process
with a Trainer; under vLLM each checkpoint gets a process of its own, since a process's exit is
the one sure way to give back an engine's GPU memory (deleting a `vllm.LLM` does not reliably:
vllm-project/vllm#3281, #21073), and the next checkpoint's engine then finds the GPU empty.
Recording resumes per checkpoint (a recorded checkpoint's parts are final), and can run beside
training: `record_run(wait=True)` records checkpoints as they appear until the run is marked
trained, which is what the Slurm launcher's recording jobs do while the training jobs go on.

Under a multi-process launch (torchrun, accelerate, a Slurm job of several tasks) every rank
trains and rank 0 alone keeps the books. With torchrun or accelerate rank 0 then records, and the
other ranks wait for the run's done marker on the file system, not in a collective (a Slurm
training job's ranks leave recording to the recording job): recording an 8B model's checkpoints outlasts any
collective's timeout (NCCL's is 10 minutes), and a recording process must not join the training
processes' group, so it starts with the launch's rendezvous variables removed.
"""
from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from premem import backends, checkpoints, io, launcher, record, recorder, training
from premem import baselines as baselines_lib
from premem import model as model_lib
from premem.config import Params
from premem.errors import PremError
from premem.run_grid import Recording

TRAINED = "trained.json"  # in <run>/train: every checkpoint of the run is saved
POLL_S = 2.0  # how often a waiting process looks at the file system; a glob costs nothing
LISTING_PATIENCE = 30  # polls a recorder waits for a checkpoint the trained mark names but no listing shows


def mark_trained(run_dir: Path, steps: list[int]) -> None:
    io.write_json(run_dir / "train" / TRAINED, {"steps": [int(s) for s in steps]})


def trained_steps(run_dir: Path) -> list[int] | None:
    """The run's checkpoint steps once training has saved them all, else None."""
    f = run_dir / "train" / TRAINED
    return json.loads(f.read_text())["steps"] if f.is_file() else None


def record_run(cfg, spec, recorded, test, heldout, record_dir, base_path: str, recording: Recording = Recording(),
               wait: bool = False, here: bool = False) -> list[int] | None:
    """Record each saved, unrecorded checkpoint of a run; with `wait`, go on recording checkpoints as
    they appear until the run is marked trained. Returns the run's steps once it is trained and
    every checkpoint recorded (the caller finishes the run), else None.

    Under vLLM each checkpoint gets a process of its own (an engine's memory goes only with its
    process); with the transformers backend the checkpoints at hand share one fresh process, or
    this one (`here`: a process that never trained, such as a recording job)."""
    run_dir = record.run_dir(record_dir, spec.run)
    args = (cfg.model_dump_json(), spec, recorded, test, heldout, str(record_dir), base_path, recording)
    patience = LISTING_PATIENCE
    while True:
        steps = trained_steps(run_dir)  # read first: checkpoints listed after it include the last one
        # A checkpoint without its weights (lost from outside) is not recordable: training redoes it.
        todo = [c["step"] for c in checkpoints.finished_checkpoints(run_dir / "train")
                if c["epoch"] <= spec.epochs and not record.part_done(run_dir, c["step"])
                and checkpoints.weight_files(c["path"])]
        if backends.get(cfg.backend).engine:
            for step in todo:
                launcher.in_fresh_process(record_checkpoints, (*args, [step]))
        elif todo and here:
            record_checkpoints(*args, todo)
        elif todo:
            launcher.in_fresh_process(record_checkpoints, (*args, todo))
        unrecorded = [s for s in steps or () if not record.part_done(run_dir, s)]
        if steps is not None and not todo and unrecorded and wait and patience > 0:
            patience -= 1  # marked trained, a checkpoint not listed yet: a shared file system's lag
            time.sleep(POLL_S)
            continue
        if steps is not None and not todo:
            return steps  # the caller's finish_run names any checkpoint still unrecorded
        if not todo and not wait:
            return None
        if not todo:
            time.sleep(POLL_S)


def record_checkpoints(cfg_json: str, spec, recorded, test, heldout, record_dir: str, base_path: str,
                       recording: Recording, steps: list[int]) -> None:
    """Saved checkpoints of a run measured as the training process would have: the starting weights
    reloaded for param_distance, adapters loaded trainable for grad_variance (where `recording`
    asks for the baselines, as in sweep.train_and_record). Under vLLM the model loads into CPU
    memory, so the engine starts on an empty GPU (premem.recorder)."""
    cfg = Params.model_validate_json(cfg_json)
    run_dir = record.run_dir(record_dir, spec.run)
    init_state = None
    if recording.baselines:
        base, _ = model_lib.load_configured(cfg, base_path)
        if cfg.lora is not None:
            base = training.apply_lora(base, cfg.lora, seed=spec.seed)  # seeded: the adapter training started from
        init_state = baselines_lib.snapshot(base)
        del base
    free_memory()  # a quantised base sits on the GPU: gone before any engine starts
    # the baselines' passes on the GPU, as in training; an engine gets the GPU to itself first
    gpu = torch.cuda.is_available() and not backends.get(cfg.backend).engine
    measure = recorder.Recorder(cfg, recorded, test, heldout, baselines=recording.baselines)
    for c in checkpoints.finished_checkpoints(run_dir / "train"):
        if c["step"] not in steps:
            continue
        lm, tok = training.load_checkpoint(c["path"], base=base_path if cfg.lora is not None else None,
                                           dtype=cfg.dtype, device="cuda" if gpu else None, trainable=True,
                                           pad_token=cfg.pad_token, quantization=cfg.quantization)
        lm.eval()
        measure.record(run_dir, spec.run, spec.seed, c["step"], c["epoch"], lm, tok, init_state=init_state,
                       checkpoint=c["path"], sample_test=recording.samples_test(c["epoch"], spec.epochs))
        del lm


def free_memory() -> None:
    """What a deleted model held, back: host memory, and the GPU's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def wait_until_done(run_dir: Path) -> None:
    """Block (a rank other than 0) until rank 0 has recorded and finished the run, or failed."""
    while not record.is_done(run_dir):
        failed = run_dir / "failed.json"
        if failed.is_file():
            raise PremError(f"run {run_dir.name}: rank 0 failed to record it: {json.loads(failed.read_text())['error']}")
        time.sleep(POLL_S)


def mark_failed(run_dir: Path, error: BaseException) -> None:
    """Rank 0's recording failed: say so to the ranks waiting on the run."""
    last = (str(error).strip().splitlines() or [""])[-1]  # one line: a CUDA error runs to many
    io.write_json(run_dir / "failed.json", {"error": f"{type(error).__name__}: {last}".rstrip(": ")})


