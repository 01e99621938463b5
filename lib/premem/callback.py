"""Door 2 of "bring your own run": `PreMemCallback`, a transformers TrainerCallback that records the
dynamics of a user's own Trainer / TRL SFTTrainer run while it trains.

    trainer = Trainer(model, args, train_dataset=..., ...)           # or SFTTrainer
    trainer.add_callback(PreMemCallback(trainer, "train.jsonl", params="params/mine.yaml",
                                        test="test.jsonl", out="runs/mine"))
    trainer.train()

At each checkpoint the Trainer saves (or every `every_epochs` epochs) it records the model into a
premem record (premem.record), optionally on a random `fraction` of the training examples, and logs
pre-memorization accuracy (with its 95% interval when subsampled), train accuracy and the memorised
share through the Trainer's own loggers (`report_to`: tensorboard, wandb, ...), as `premem/...`.
The record is finished (its tables written) when training ends; `premem fit` and the notebooks read
it. Recording leaves training untouched: the RNG streams are restored after each recording, so a
run with the callback trains exactly as one without. Under DDP rank 0 records (the others go on);
under FSDP the model is sharded and a forward on one rank would wait for the others, so the
callback refuses: record the saved checkpoints with `premem record` instead. Under DDP the others
wait for rank 0 in their next gradient all-reduce: keep recording within the Trainer's
`ddp_timeout` (30 minutes by default), with `fraction` or `every_epochs`.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from transformers import TrainerCallback

from premem import backends, baselines, record, record_folder, recorder, training
from premem import data as data_lib
from premem.checkpoints import checkpoint_folders
from premem.config import Params, load_params
from premem.errors import PremError


class PreMemCallback(TrainerCallback):
    def __init__(self, trainer, data, *, params: str | Path | dict | Params, test=None, heldout=None,
                 out: str | Path | None = None, run: str | None = None, every_epochs: int | None = None,
                 fraction: float = 1.0, tau: float | None = None, baselines: bool = False):
        """`data`, `test`, `heldout`: the training data the Trainer sees, test data and held-out
        training-distribution data (tau calibration), each a JSONL file read as the params'
        jsonl task (task_options name the fields) or a list of premem.tasks.Example. `params`: the
        recording keys (k, temperature, max_new_tokens, prompt_template, target_template, stop, ...);
        `out`: the record folder (default <out_dir>/<name>-<hash>); `run`: the run's name (default
        the Trainer's output_dir name); `tau`: a fixed threshold, in place of the params' rule;
        `baselines`: also record claim 2's predictors (param_distance, which keeps a CPU copy of the
        starting weights, and grad_variance, a backward pass per minibatch)."""
        if getattr(trainer, "is_fsdp_enabled", False):  # before any work: a sharded forward on rank 0 alone hangs
            raise PremError("PreMemCallback: under FSDP each process holds a shard of the model, which cannot "
                            "sample alone: record the saved checkpoints with `premem record` instead")
        self.trainer = trainer
        cfg = params if isinstance(params, Params) else load_params(params)
        if tau is not None:
            cfg = load_params({**cfg.model_dump(), "tau": tau, "tau_rule": "fixed"})
        self.cfg = data_lib.with_own_data(cfg, data, test, heldout)
        if every_epochs is not None and every_epochs < 1:
            raise PremError(f"every_epochs must be >= 1 or None, got {every_epochs}")
        strategy = trainer.args.save_strategy
        if every_epochs is None and str(getattr(strategy, "value", strategy)) == "no":
            raise PremError("the Trainer saves no checkpoints (save_strategy 'no'): PreMemCallback records at "
                            "each save; set save_strategy, or every_epochs=n")
        engine = backends.get(cfg.backend).engine
        if every_epochs is not None and engine:
            raise PremError(f"backend {cfg.backend} samples from a saved checkpoint folder: with every_epochs nothing "
                            "is saved where it records; record at the Trainer's saves (every_epochs=None)")
        if engine and trainer.args.world_size > 1:  # vLLM's teardown ends the Trainer's group
            raise PremError(f"backend {cfg.backend}: an engine inside a Trainer of several processes would take down "
                            "their process group; record the saved checkpoints with `premem record` instead")
        train, test, heldout = (data_lib.load_own_examples(self.cfg, x, split) if isinstance(x, (str, Path))
                                else list(x or []) for x, split in ((data, "train"), (test, "test"), (heldout, "heldout")))
        data_lib.check_splits(train, test, heldout)
        self.train_examples = train
        self.recorder = recorder.Recorder(self.cfg, recorder.subsample(train, fraction, self.cfg.data_seed),
                                          test, heldout, baselines=baselines)
        self.out = Path(out) if out else record.default_dir(self.cfg)
        self.run = record.check_run_name(run or Path(trainer.args.output_dir).resolve().name)
        self.recording = dict(fraction=float(fraction), baselines=bool(baselines))
        trainer_dir, out_dir = Path(trainer.args.output_dir).resolve(), self.out.resolve()
        if out_dir == trainer_dir or out_dir.is_relative_to(trainer_dir) or trainer_dir.is_relative_to(out_dir):
            raise PremError(f"out={self.out}: the record and the Trainer's output_dir ({trainer.args.output_dir}) "
                            "must be apart (a record's --force would otherwise reach the checkpoints)")
        record_folder.check_target(self.out, self.cfg)  # another config's record fails now, not after an epoch
        self.every_epochs = every_epochs
        self.init_state, self.folder, self.lock = None, None, contextlib.ExitStack()

    def on_train_begin(self, args, state, control, model=None, **kw):
        if not state.is_world_process_zero:
            return
        command = f"PreMemCallback {args.output_dir}"
        self.lock.close()  # a run of this callback stopped without on_train_end (Ctrl-C) still holds it
        self.lock.enter_context(record_folder.locked(self.out, command))  # held until training ends (or the process)
        record_folder.create(self.out, self.cfg, command=command)
        # state.num_train_epochs is what the Trainer saves in trainer_state.json (premem record reads it).
        self.folder = record.start_run(self.out, self.run, lr=args.learning_rate, epochs=state.num_train_epochs,
                                       data_fraction=1.0, seed=args.seed, examples=self.train_examples,
                                       source=str(Path(args.output_dir).resolve()), recording=self.recording)
        if state.global_step > 0:  # resumed from a checkpoint: its weights, not the starting ones, are loaded
            self._resumed(args, state)
        elif self.recorder.baselines:  # theta0 of param_distance: the weights training starts at
            self.init_state = baselines.snapshot(model)

    def on_save(self, args, state, control, **kw):
        if self.every_epochs is None:
            self._record(args, state, Path(args.output_dir) / f"checkpoint-{state.global_step}", **kw)

    def on_epoch_end(self, args, state, control, **kw):
        if self.every_epochs is not None and round(state.epoch) % self.every_epochs == 0:
            self._record(args, state, None, **kw)

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero and self.folder is not None:
            recorded = sorted({int(p.stem.split("-")[1]) for p in (self.folder / "parts").glob("samples-*.parquet")})
            if recorded:  # this session's and an earlier one's (a resumed run)
                record.finish_run(self.folder, recorded)
                record.finish(self.out)
        self.lock.close()

    def _resumed(self, args, state) -> None:
        """A resumed run: say what the callback cannot know (the starting weights, for
        param_distance, which is then NaN) and which saved checkpoints a kill left unrecorded."""
        lost = [s for s, _ in checkpoint_folders(args.output_dir)
                if s <= state.global_step and not record.part_done(self.folder, s)]
        if lost:
            print(f"premem: checkpoints {lost} of {args.output_dir} were saved but not recorded (the run was "
                  f"stopped while recording); record them with `premem record {args.output_dir} --checkpoints "
                  f"{','.join(map(str, lost))} --out {self.out} ...`", file=sys.stderr)
        if self.recorder.baselines:
            print("premem: resumed run: the weights it started from are not known here, so param_distance "
                  "is NaN from now on", file=sys.stderr)

    def _record(self, args, state, checkpoint, model=None, processing_class=None, **kw):
        if not state.is_world_process_zero:
            return
        tok = processing_class if processing_class is not None else kw.get("tokenizer")
        if tok is None:
            raise PremError("PreMemCallback needs the Trainer's tokenizer: pass processing_class= to the Trainer")
        step, epoch = state.global_step, round(float(state.epoch), 4)
        with training.recording(model):
            self.recorder.record(self.folder, self.run, args.seed, step, epoch, model, tok,
                                 init_state=self.init_state, checkpoint=checkpoint)
        self.trainer.log(recorder.run_summary(self.cfg, self.out, self.run))
