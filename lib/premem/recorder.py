"""What premem measures at a checkpoint, and `premem record` over any trainer's saved checkpoints.

At a checkpoint the recorder samples k answers to every recorded training question and (unless
told not to) every test question, grades them with the task's answer checker, computes the
perplexity of every recorded gold training solution and of the held-out ones (tau calibration),
and the baseline predictors (distance from the weights training started at, gradient variance).
The sweep, `premem record` and `PreMemCallback` all measure through `Recorder.record`, so for the
same weights and seeds they write the same parts of the same record (premem.record).

`record_saved` is door 1 of "bring your own run": it scores each `checkpoint-<step>` folder a
trainer saved (HF Trainer, TRL, a full model or a peft/LoRA adapter over a base), one at a time,
resumable per checkpoint.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from premem import (backends, baselines, checkpoints, encoding, grading, launcher, metrics, perplexity, record,
                    record_folder, record_schema, tasks, trainer_args, training)
from premem import model as model_lib
from premem.config import Params
from premem.errors import PremError

GRAD_VARIANCE_BATCHES = 4  # minibatches whose gradients give the gradient-variance predictor


def sample_answers(cfg: Params, lm, checkpoint, tok, prompts: list[str], k: int, seed: int,
                   progress: bool = False, context: int | None = None) -> list[list[str]]:
    """k answers per prompt with the params' decoding keys, by the params' backend: transformers
    samples the loaded `lm`, an engine (vLLM) the saved `checkpoint` folder with a context of
    `context` tokens."""
    return backends.get(cfg.backend).sample(cfg, lm, checkpoint, tok, prompts, k, seed, progress, context)


def checkpoint_seed(cfg: Params, run_seed: int, step: int) -> int:
    """The sampling seed of a checkpoint: independent of what was recorded before it."""
    return cfg.data_seed * 1_000_003 + run_seed * 10_007 + step


def subsample(examples: list, fraction: float, seed: int = 0) -> list:
    """A seeded random `fraction` of the examples (at least one), in their own order."""
    if not 0 < fraction <= 1:
        raise PremError(f"fraction of training examples to record must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(examples)
    m = max(1, int(round(fraction * len(examples))))
    keep = np.sort(np.random.default_rng([seed, 12345]).choice(len(examples), m, replace=False))
    return [examples[i] for i in keep]


class Recorder:
    """The measurement at one checkpoint for one run's example sets (premem.tasks.Example lists):
    `train` (the training examples recorded), `test` (sampled for test accuracy; may be empty) and
    `heldout` (training-distribution examples the run never saw: scored, for tau calibration);
    `baselines`: also the predictors of claim 2 (param_distance, grad_variance), else NaN."""

    def __init__(self, cfg: Params, train, test=(), heldout=(), baselines: bool = True):
        if not train:
            raise PremError("no training examples to record")
        if cfg.tau_rule == "heldout" and not heldout:
            raise PremError("tau_rule heldout calibrates tau on held-out examples, and none are given: pass them "
                            "(premem record --heldout, PreMemCallback heldout=) or set tau_rule: fixed")
        backends.check(cfg.model_dump(), f"params '{cfg.name}'")
        self.cfg, self.train, self.test, self.heldout = cfg, list(train), list(test), list(heldout)
        # The baseline predictors cost a backward pass per minibatch and two float32 copies of the
        # trainable weights (gradient variance), and a copy of the starting weights (distance).
        self.baselines = baselines
        self.checker = tasks.answer_checker(cfg)
        self.prompts = {s: [tasks.format_prompt(ex, cfg.prompt_template) for ex in getattr(self, s)]
                        for s in ("train", "test", "heldout")}
        self.targets = {s: [tasks.format_target(ex, cfg.target_template) for ex in getattr(self, s)]
                        for s in ("train", "heldout")}
        check_gold(self.train + self.test + self.heldout, self.checker, strict=cfg.task == "jsonl")
        self.lengths_checked = False

    def record(self, folder: Path, run: str, run_seed: int, step: int, epoch, model, tok, *,
               init_state=None, checkpoint=None, sample_test: bool = True) -> bool:
        """Write the checkpoint's parts into the run's folder; False when they were there already.
        `init_state` (baselines.snapshot of the starting weights) gives param_distance, else NaN;
        `checkpoint` is the saved folder, for vLLM."""
        if record.part_done(folder, step):
            return False
        if not self.lengths_checked:  # once, with the first checkpoint's tokenizer, before any sampling
            check_lengths(self.cfg, model, tok, self.prompts["train"] + self.prompts["heldout"],
                          self.targets["train"] + self.targets["heldout"])
            self.lengths_checked = True
        cfg, seed = self.cfg, checkpoint_seed(self.cfg, run_seed, step)
        scored = self.train + self.heldout
        prompts, targets = self.prompts["train"] + self.prompts["heldout"], self.targets["train"] + self.targets["heldout"]
        backend = backends.get(cfg.backend)
        if backend.engine and checkpoint is None:
            raise PremError(f"backend {cfg.backend} measures a saved checkpoint folder, and step {step} has none")
        # One engine serves the checkpoint's three measurements: one context length for all.
        length = backend.context(cfg, tok, prompts + self.prompts["test"], targets) if backend.context else None
        rows = []
        for split, k in (("train", cfg.k), ("test", cfg.k_test or cfg.k)):
            examples = getattr(self, split) if split == "train" or sample_test else []
            completions = sample_answers(cfg, model, checkpoint, tok, self.prompts[split][:len(examples)], k, seed,
                                         context=length)
            for ex, outs in zip(examples, completions):
                for j, g in enumerate(grading.grade_many(outs, ex.answer, self.checker)):
                    rows.append(dict(run=run, step=step, epoch=epoch, split=split, example_id=ex.id, sample_idx=j,
                                     correct=g.correct, correct_strict=g.correct_strict, parse_ok=g.parse_ok,
                                     answer=g.answer))
        nll, n_tokens = backend.target_nll(cfg, model, checkpoint, tok, prompts, targets, length)
        ppl = pd.DataFrame(dict(run=run, step=step, epoch=epoch, example_id=[ex.id for ex in scored],
                                trained=[i < len(self.train) for i in range(len(scored))],
                                nll=nll, n_tokens=n_tokens, perplexity=perplexity.perplexity(nll, n_tokens)))
        distance = variance = np.nan
        if self.baselines and backend.engine:
            _to_gpu_after_engine(backend, model)
        if self.baselines:
            if init_state is not None:
                distance = baselines.param_distance(model, init_state)
            variance = baselines.gradient_variance(model, tok, self.prompts["train"], self.targets["train"],
                                                  batch_size=cfg.per_device_batch_size or cfg.batch_size,
                                                  n_batches=GRAD_VARIANCE_BATCHES, seed=seed,
                                                  add_eos=cfg.target_eos, max_length=cfg.model_max_length)
        stats = pd.DataFrame([dict(run=run, step=step, epoch=epoch, param_distance=distance, grad_variance=variance)])
        # samples last: part_done needs all three, so a kill in between redoes the checkpoint.
        record.write_part(folder, "perplexity", step, ppl)
        record.write_part(folder, "checkpoints", step, stats)
        record.write_part(folder, "samples", step, pd.DataFrame(rows, columns=[c.name for c in record_schema.SCHEMA["samples"]]))
        return True


def check_gold(examples, checker: str, strict: bool) -> None:
    """Every gold solution graded right against its own answer by the task's checker: samples are
    written like the solutions, so where the checker finds no answer in them (no `####`, no boxed
    answer) train accuracy can only be 0. For a user's data (strict) one error naming the first;
    for premem's own tasks a warning."""
    bad = [ex for ex in examples if not grading.grade(ex.solution, ex.answer, checker).correct]
    if not bad:
        return
    ex = bad[0]
    where = f"{ex.meta['file']}:{ex.meta['line']}" if "line" in ex.meta else f"example {ex.id}"
    what = "finds no answer in" if not grading.grade(ex.solution, ex.answer, checker).parse_ok else "grades wrong"
    message = (f"{where}: the '{checker}' checker {what} the gold solution ({len(bad)} of {len(examples)} "
               f"examples), so a sample written like it is never right: end solutions with the checker's "
               "answer format (#### N for marker) or choose the checker your data is written for (task_options)")
    if strict:
        raise PremError(message)
    warnings.warn(message, stacklevel=2)


def check_lengths(cfg: Params, model, tok, prompts: list[str], targets: list[str], note: bool = True) -> None:
    """Examples measured as training saw them: over model_max_length, scored on the tokens within it
    (`note`: a line says how many); a prompt alone over it, or an example over the model's context
    without a model_max_length, one error."""
    lengths = [len(ids) for ids, _ in encoding.encode_pairs(tok, prompts, targets, add_eos=cfg.target_eos,
                                                              max_length=None)]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limit = cfg.model_max_length
    if limit is not None:
        encoding.encode_pairs(tok, prompts, targets, add_eos=cfg.target_eos, max_length=limit)  # prompts fit
        over = sum(n > limit for n in lengths)
        if over and note:
            print(f"premem: {over} of {len(lengths)} examples are longer than model_max_length {limit}: their "
                  "perplexity is of the target tokens training saw", file=sys.stderr)
    if context and (limit is None or limit > context) and max(lengths) > context:
        i = int(np.argmax(lengths))
        raise PremError(f"example {i} is {lengths[i]} tokens, and the model's context is {context}: set "
                        "model_max_length (training cuts examples there) or shorten the data")


def check_lengths_before_training(cfg: Params, base: str, examples: list) -> None:
    """check_lengths with the base's tokenizer and config alone (no weights loaded), before a sweep
    trains anything: a length error then costs nothing."""
    folder, kwargs = model_lib.source(str(base), cfg.trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(folder, cache_dir=cfg.path("cache_dir"),
                                            trust_remote_code=cfg.trust_remote_code, **kwargs)
        config = AutoConfig.from_pretrained(folder, cache_dir=cfg.path("cache_dir"),
                                            trust_remote_code=cfg.trust_remote_code, **kwargs)
    except (OSError, ValueError):
        return  # loading the base says what is wrong with it, with the weights
    prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in examples]
    targets = [tasks.format_target(ex, cfg.target_template) for ex in examples]
    check_lengths(cfg, SimpleNamespace(config=config), tok, prompts, targets, note=False)


def _to_gpu_after_engine(backend, model) -> None:
    """The baselines' backward passes on the GPU the engine has just given back: the recording stage
    loads the model into CPU memory, so the engine started on an empty GPU (premem.stages)."""
    backend.release()
    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model.to("cuda")


# ---- door 1: a trainer's saved checkpoints ---------------------------------------------------------


def record_saved(cfg: Params, checkpoints_dir: str | Path, out: str | Path, train, test=(), heldout=(), *,
                 select: str = "all", base: str | None = None, run: str | None = None, fraction: float = 1.0,
                 baselines: bool = False, progress: bool = True) -> Path:
    """Record every selected checkpoint of one training run into the record `out` (created, or
    resumed: checkpoints already recorded are skipped), then finish its tables. `base` is the model
    training started from: adapters are put on it (default: their adapter_config's base), and full
    models get param_distance from it (default: NaN)."""
    ckpts = checkpoints.saved_checkpoints(checkpoints_dir, select)  # every bad folder fails before any work
    check_base(base, ckpts, cfg.pad_token)
    run = record.check_run_name(run or Path(checkpoints_dir).resolve().name)
    recorder = Recorder(cfg, subsample(train, fraction, cfg.data_seed), test, heldout, baselines=baselines)
    meta = trainer_args.training_arguments(ckpts[-1]["path"])
    record_folder.check_target(out, cfg)
    with record_folder.locked(out, f"premem record {checkpoints_dir}"):
        record_folder.create(out, cfg, command=f"premem record {checkpoints_dir}")
        _record_checkpoints(recorder, ckpts, Path(out), run, meta, train, base, progress,
                            source=str(Path(checkpoints_dir).resolve()), recording=dict(fraction=float(fraction),
                                                                                       baselines=bool(baselines)))
    return Path(out)


def _record_checkpoints(recorder: Recorder, ckpts: list[dict], out: Path, run: str, meta: dict, trained: list,
                        base: str | None, progress: bool, source: str, recording: dict) -> None:

    folder = record.start_run(out, run, lr=meta["lr"], epochs=meta["epochs"], data_fraction=1.0,
                              seed=meta["seed"], examples=trained, source=source, recording=recording)
    # Under vLLM each checkpoint is recorded in a process of its own: an engine's GPU memory comes
    # back only with its process (premem.stages), and a full model's next checkpoint needs a new engine.
    apart = backends.get(recorder.cfg.backend).engine
    init_state = None if apart else _starting_weights(recorder, ckpts, base)
    for c in tqdm(ckpts, desc=f"record {run}", unit="checkpoint", disable=not progress):
        if record.part_done(folder, c["step"]):
            continue
        if apart:
            launcher.in_fresh_process(_record_one, (recorder, folder, run, meta["seed"], c, base, None))
        else:
            _record_one(recorder, folder, run, meta["seed"], c, base, init_state)
    record.finish_run(folder, [c["step"] for c in ckpts])
    record.finish(out)


def starting_model(cfg: Params, base: str | None) -> str | None:
    """The model training started from: `--base`, else the params' base_model (not the embedded
    one, which is premem's own recipe, not a folder)."""
    return base or (None if cfg.base_model == "embedded" else model_lib.named_base(cfg.base_model) or cfg.base_model)


def check_base(base: str | None, ckpts: list[dict], pad_token: str = "eos") -> None:
    """A `--base` whose vocabulary or width differs from the saved full models' is not where they
    started: one error before any work, not a shape error after sampling (pad_token add: training
    added one token)."""
    if base is None or not Path(base, "config.json").is_file():
        return  # a hub id or gguf file: checked when loaded
    theirs = record.read_json(Path(base, "config.json"))
    for c in ckpts:
        if c["kind"] != "model":
            continue
        ours = record.read_json(c["path"] / "config.json")
        for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
            added = 1 if key == "vocab_size" and pad_token == "add" else 0
            if key in ours and key in theirs and ours[key] - theirs[key] not in {0, added}:
                raise PremError(f"--base {base}: {key} {theirs[key]}, and {c['path'].name} has {ours[key]}: not the "
                                "model this run started from")


def _starting_weights(recorder: Recorder, ckpts: list[dict], base: str | None):
    """baselines.snapshot of `base`, where the baselines need it (param_distance of full models)."""
    if not (recorder.baselines and base is not None and any(c["kind"] == "model" for c in ckpts)):
        return None
    init_model, _ = training.load_checkpoint(base)
    return baselines.snapshot(init_model)


def _record_one(recorder: Recorder, folder: Path, run: str, seed: int, c: dict, base: str | None, init_state) -> None:
    """One saved checkpoint into the run's folder (init_state None: loaded here, where needed)."""
    if init_state is None:
        init_state = _starting_weights(recorder, [c], base)
    cfg = recorder.cfg
    model, tok = training.load_checkpoint(c["path"], base=base if c["kind"] == "adapter" else None,
                                          trainable=True, dtype=cfg.dtype, quantization=cfg.quantization,
                                          pad_token=cfg.pad_token, tokenizer=starting_model(cfg, base),
                                          trust_remote_code=cfg.trust_remote_code)
    recorder.record(folder, run, seed, c["step"], c["epoch"], model, tok,
                    init_state=init_state if c["kind"] == "model" else None, checkpoint=c["path"])


def run_summary(cfg: Params, record_dir: Path, run: str) -> dict:
    """Pre-memorization accuracy, train accuracy and memorised share of a run at its newest recorded
    checkpoint, with the 95% interval of the pre-mem estimate over the recorded examples (finite
    population correction when they are a subsample of the training set)."""
    dyn = record.read_run_parts(record_dir, run)
    tau = metrics.chosen_tau(cfg, [dyn])[0]
    per_example = metrics.pre_mem_acc(dyn.train_acc, dyn.perplexity, tau)[-1]
    lo, hi = metrics.mean_interval(per_example, population=record.run_info(record_dir, run)["n_train"])
    out = {"premem/pre_mem_acc": float(np.nanmean(per_example)), "premem/pre_mem_acc_lo": lo,
           "premem/pre_mem_acc_hi": hi, "premem/train_acc": float(dyn.mean_train_acc()[-1]),
           "premem/memorized_frac": float(dyn.memorized_frac(tau)[-1]), "premem/tau": float(tau),
           "premem/n_recorded": int(np.sum(~np.isnan(per_example)))}
    if not np.isnan(dyn.test_acc[-1]):
        out["premem/test_acc"] = float(dyn.test_acc[-1])
    return out


