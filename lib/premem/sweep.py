"""The sweep: finetune under a grid of configurations and record every checkpoint.

For each run (lr x epochs x data fraction x seed): finetune from the base model, saving a checkpoint
per epoch; at each checkpoint the recorder (premem.recorder) samples k answers for every training
and test query, grades them, and computes the perplexity of every training target, into a record
(premem.record). Everything is cached: trainer checkpoints resume, each recorded checkpoint is a
set of parquet parts written atomically, and a finished run is marked done, so a killed sweep
rerun recomputes nothing that finished and yields identical tables.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from premem import bars, backends, checkpoints, launcher, record, record_folder, recorder, stages, tasks, training
from premem import baselines as baselines_lib
from premem import data as data_lib
from premem import model as model_lib
from premem.bases import base_model_path
from premem.config import Params
from premem.errors import PremError
from premem.run_grid import Recording, RunSpec, grid, train_subset

def save_every(cfg: Params, epochs: int) -> int:
    if cfg.max_checkpoints is None:
        return cfg.save_every_epochs
    return max(cfg.save_every_epochs, -(-epochs // cfg.max_checkpoints))


def finetune_on(cfg: Params, lm, tok, train, output_dir, spec: RunSpec, epochs: int, save_every_epochs: int,
                on_checkpoint=None) -> list[dict]:
    """`training.finetune` on examples, with the params' prompt format and optimiser keys; the
    training of every recorded run, and of curation's IFD probes."""
    return training.finetune(
        lm, tok, [tasks.format_prompt(ex, cfg.prompt_template) for ex in train],
        [tasks.format_target(ex, cfg.target_template) for ex in train],
        output_dir=output_dir, lr=spec.lr, epochs=epochs, batch_size=cfg.batch_size,
        warmup_ratio=cfg.warmup_ratio, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, mixed_precision=cfg.mixed_precision, max_length=cfg.model_max_length,
        add_eos=cfg.target_eos, per_device_batch_size=cfg.per_device_batch_size, seed=spec.seed,
        save_every_epochs=save_every_epochs, lora=cfg.lora, on_checkpoint=on_checkpoint, progress=False,
    )


def train_and_record(cfg: Params, spec: RunSpec, train, test, record_dir: str | Path, base_path: str,
                     heldout=(), recorded=None, recording: Recording = Recording(), final_only: bool = False,
                     record_here: bool = True) -> Path:
    """Finetune `base_path` on `train` and record every checkpoint; resumes after a kill.

    The building block of a sweep, and of anything that trains on its own example lists (data
    curation trains on originals plus collected examples). `recorded`: the training examples whose
    accuracy and perplexity are recorded (default: all of `train`); `recording`: what else each
    checkpoint records (run_grid.Recording: the test set at every checkpoint or the last alone,
    claim 2's baseline predictors or NaN). Curation records less: it needs the originals' dynamics
    and the final test accuracy, and sampling is most of a run's cost.
    final_only saves and records the last checkpoint alone (no resume point inside the run): for
    runs whose dynamics nobody reads, only their final accuracies. With `stages: separate` the
    saved checkpoints are recorded after training (premem.stages), here unless record_here=False
    says a recording job of its own does it. Returns the run folder.
    """

    run_dir = record.run_dir(record_dir, spec.run)
    if training.rank0_value(record.is_done(run_dir)):  # every rank as rank 0 sees it: all train, or none
        return run_dir
    if not train:
        raise PremError(f"run {spec.run}: empty training set")
    separate, lead = cfg.stages == "separate", launcher.rank() == 0
    recorded = train if recorded is None else recorded
    if lead:  # the books are rank 0's alone: two ranks removing one folder race
        open_run(cfg, spec, train, record_dir)
    training.wait_for_ranks()  # the others train once rank 0 has cleared the way
    lm, tok = model_lib.load_configured(cfg, base_path)
    if cfg.lora is not None:
        lm = training.apply_lora(lm, cfg.lora, seed=spec.seed)  # before the snapshot: same parameter names
    # The starting weights and the measurement live where recording happens: here only when together.
    init_state = baselines_lib.snapshot(lm) if recording.baselines and not separate else None
    measure = None if separate else recorder.Recorder(cfg, recorded, test, heldout, baselines=recording.baselines)

    def on_checkpoint(step, epoch, model):
        measure.record(run_dir, spec.run, spec.seed, step, epoch, model, tok, init_state=init_state,
                       checkpoint=run_dir / "train" / f"checkpoint-{step}",  # the folder just written, for vLLM
                       sample_test=recording.samples_test(epoch, spec.epochs))

    every = spec.epochs if final_only else save_every(cfg, spec.epochs)
    ckpts = finetune_on(cfg, lm, tok, train, run_dir / "train", spec, spec.epochs, every,
                        None if separate else on_checkpoint)
    steps = [c["step"] for c in ckpts]
    if lead:
        stages.mark_trained(run_dir, steps)
    if separate:
        del lm  # the Trainer's weights go, and the GPU memory they held, before a recorder loads any
        stages.free_memory()
        if not lead:
            if record_here:
                stages.wait_until_done(run_dir)  # on the file system: no collective outlasts recording
            return run_dir
        if not record_here:
            return run_dir
        try:
            stages.record_run(cfg, spec, recorded, test, heldout, record_dir, base_path, recording)
            finish_run(cfg, run_dir, steps)
        except BaseException as e:
            stages.mark_failed(run_dir, e)
            raise
    else:
        finish_run(cfg, run_dir, steps)
    return run_dir


def open_run(cfg: Params, spec: RunSpec, train, record_dir: str | Path) -> Path:
    """A run about to be trained: unfinished again, nothing left of an earlier attempt that a
    recorder could take for this one's (its failure, its `trained` mark), and its run.json."""
    run_dir = record.run_dir(record_dir, spec.run)
    record.reopen_run(run_dir)
    (run_dir / "failed.json").unlink(missing_ok=True)
    (run_dir / "train" / stages.TRAINED).unlink(missing_ok=True)  # written again once training ends
    lost = [c for c in checkpoints.finished_checkpoints(run_dir / "train") if not record.part_done(run_dir, c["step"])]
    # With separate stages a saved checkpoint still holding its weights is simply recorded next.
    if any(cfg.stages != "separate" or not checkpoints.weight_files(c["path"]) for c in lost):
        # Parts of finished checkpoints were deleted or damaged from outside. Training is
        # deterministic: train the run again from its start (premem's own checkpoints go) and record
        # only what was lost; the tables then equal an uninterrupted sweep's.
        shutil.rmtree(run_dir / "train")
    record.start_run(record_dir, spec.run, lr=spec.lr, epochs=spec.epochs, data_fraction=spec.data_fraction,
                     seed=spec.seed, examples=train)
    return run_dir


def finish_run(cfg: Params, run_dir: Path, steps: list[int]) -> None:
    """A trained run whose every checkpoint is recorded is done; with keep_checkpoints: last only its
    final weights stay."""
    missing = [s for s in steps if not record.part_done(run_dir, s)]
    if missing:
        raise PremError(f"run {run_dir.name}: checkpoints {missing} finished training but were never recorded")
    if cfg.keep_checkpoints == "last":  # recorded: only the final weights are needed later
        for c in checkpoints.finished_checkpoints(run_dir / "train"):
            if c["step"] in steps[:-1]:
                for f in checkpoints.weight_files(c["path"]):
                    f.unlink()
    record.finish_run(run_dir, steps)


def check_launch(cfg: Params) -> None:
    """What the params ask of this machine and launch, checked before anything is made."""
    backends.check(cfg.model_dump(), f"params '{cfg.name}'")
    if backends.get(cfg.backend).engine and cfg.stages == "together":
        raise PremError(f"stages: backend {cfg.backend} records with an engine of its own, which must not share the "
                        "Trainer's process and GPU: set stages: separate")
    if cfg.stages == "together" and (launcher.world_size() > 1 or under_fsdp()):
        how = "FSDP: each holds a shard of the weights" if under_fsdp() else f"{launcher.world_size()} processes"
        raise PremError(f"stages: training here is split over ranks ({how}), and recording inside training needs "
                        "the whole model in one process: set stages: separate (rank 0 records the saved "
                        "checkpoints while the others wait)")
    if cfg.launcher == "slurm" and launcher.world_size() > 1:
        raise PremError(f"launcher: slurm submits jobs of its own (ranks: slurm_train_tasks), and this is one of "
                        f"{launcher.world_size()} processes of a launch: start premem sweep once, without torchrun")
    if cfg.mixed_precision in ("fp16", "bf16") and not torch.cuda.is_available() and cfg.launcher == "local":
        raise PremError(f"mixed_precision: {cfg.mixed_precision} autocasts on a GPU, and none is here "
                        "(auto: none on a CPU)")
    if cfg.launcher == "slurm":  # a launcher that cannot start fails before anything is made
        from premem.launcher import submitit_module

        submitit_module()


def under_fsdp() -> bool:
    """Whether accelerate launched this process with FSDP (it says so in the environment)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def _run_job(cfg_json: str, spec: RunSpec, train, test, heldout, record_dir: str, base_path: str,
             recorded=None, recording: Recording = Recording(), final_only: bool = False,
             record_here: bool = True) -> str:
    train_and_record(Params.model_validate_json(cfg_json), spec, train, test, record_dir, base_path, heldout,
                     recorded, recording, final_only, record_here)
    return spec.run


def _record_job(cfg_json: str, spec: RunSpec, recorded, test, heldout, record_dir: str, base_path: str,
                recording: Recording = Recording()) -> str:
    """A recording job beside a run's training job: its checkpoints recorded as they appear."""
    cfg = Params.model_validate_json(cfg_json)
    run_dir = record.run_dir(record_dir, spec.run)
    if not record.is_done(run_dir):
        steps = stages.record_run(cfg, spec, recorded, test, heldout, record_dir, base_path, recording,
                                  wait=True, here=True)  # this job never trained
        finish_run(cfg, run_dir, steps)
    return spec.run


def run_jobs(cfg: Params, jobs: dict, test, heldout, record_dir: str | Path, base_path: str,
             desc: str | None = None, recorded=None, recording: Recording = Recording(), final_only=()) -> None:
    """Train and record each run of `jobs` ({RunSpec: training examples}) not yet done
    (`recorded`, `recording`: as in train_and_record, for every job; `final_only`: the names
    of the runs recorded at their last checkpoint alone), in cfg.workers one-thread processes
    (launcher.map_one_thread). `desc`: a bar of the jobs' checkpoints under that name, moving as
    each is recorded, in whichever process (premem.bars); None: no bar."""
    planned = sum(1 if s.run in final_only else bars.saves(s.epochs, save_every(cfg, s.epochs))
                  for s in jobs)
    bar = tqdm(total=planned, desc=desc, unit="checkpoint", disable=desc is None or launcher.rank() != 0)
    with bars.counting(bar, lambda: bars.recorded_checkpoints(record_dir, [s.run for s in jobs])):
        _run_jobs(cfg, jobs, test, heldout, record_dir, base_path, bar, recorded, recording, final_only)
    bar.close()


def _run_jobs(cfg: Params, jobs: dict, test, heldout, record_dir, base_path: str, bar, recorded, recording,
              final_only) -> None:
    # Ranks of a multi-process launch all go through every run (train_and_record skips a done one
    # on rank 0's word), so that none waits for the others in a run they skipped.
    todo = {s: t for s, t in jobs.items()
            if launcher.world_size() > 1 or not record.is_done(record.run_dir(record_dir, s.run))}
    # Longest first (epochs x examples: training, and the checkpoints recorded, grow with both), so
    # that no worker is left alone with a long run at the end. Runs do not depend on their order.
    todo = dict(sorted(todo.items(), key=lambda job: -job[0].epochs * len(job[1])))
    args = [(cfg.model_dump_json(), s, t, test, heldout, str(record_dir), base_path, recorded, recording,
             s.run in final_only) for s, t in todo.items()]

    def done(run):
        bar.set_postfix_str(f"{run} done")

    if cfg.launcher == "local":  # the ranks of a multi-process launch train each run together
        launcher.map_one_thread(_run_job, args, 1 if launcher.world_size() > 1 else cfg.workers, done)
        return
    if cfg.stages == "together":  # one job per run, through submitit; its logs beside the record
        launcher.run_arrays(cfg, [launcher.Array(_run_job, args)], Path(record_dir) / "jobs", done)
        return
    # A training job per run and, beside it, a recording job that records its checkpoints as they
    # appear. The books are kept here first, so no recorder starts on what an earlier attempt left.
    for spec, train in todo.items():
        open_run(cfg, spec, train, record_dir)
    trains = launcher.Array(_run_job, [(*a, False) for a in args], role="train")  # record_here=False
    records = launcher.Array(_record_job, [(c, s, t if r is None else r, te, h, d, b, rec)
                                           for c, s, t, te, h, d, b, r, rec, _ in args], role="record")
    launcher.run_arrays(cfg, [trains, records], Path(record_dir) / "jobs", done)


def sweep(cfg: Params, out: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Run the whole grid; returns the record folder, which `premem fit` reads."""
    out = Path(out) if out else record.default_dir(cfg)
    check_launch(cfg)
    specs = grid(cfg)
    train_all, test, heldout = data_lib.load_examples(cfg, heldout=True)  # a bad task fails before the folder is touched
    # Under a multi-process launch (accelerate, torchrun) every rank trains each run with the others;
    # rank 0 alone holds the lock, makes the folder and the tables (a lock per rank would deadlock).

    lead = launcher.rank() == 0
    if lead:  # a rank reading while rank 0 clears the folder (--force) would see half a record
        record_folder.check_target(out, cfg, force=force)  # a folder that is not this config's record fails now
    with record_folder.locked(out, "premem sweep") if lead else contextlib.nullcontext():
        if lead:
            record_folder.create(out, cfg, force=force, command="premem sweep")
        training.wait_for_ranks()  # no rank reads the folder before rank 0 has made it
        base = base_model_path(cfg, progress=progress)
        recorder.check_lengths_before_training(cfg, base, train_all + heldout)  # before any run trains
        run_jobs(cfg, {s: train_subset(train_all, s) for s in specs}, test, heldout, out, base,
                 f"sweep {cfg.name}" if progress else None)
        if lead:
            record.finish(out)
    return out
