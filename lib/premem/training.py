"""Finetuning with a per-epoch checkpoint record.

`finetune` runs the transformers Trainer with completion-only loss (prompt tokens and padding are
masked with -100), AdamW, linear schedule with warmup, gradient clipping and weight decay; it saves a
checkpoint folder (model + tokenizer) every `save_every_epochs` epochs and calls `on_checkpoint`
there, which is where the per-checkpoint record (samples, perplexities) hooks in. Rerunning with
the same output_dir resumes from the last finished checkpoint instead of redoing epochs. LoRA/QLoRA
come from peft; FSDP and multi-GPU from `accelerate launch` of the same code (no device is fixed).

The baseline predictors measured on its checkpoints are premem.baselines.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from premem import io, launcher, rng
from premem.checkpoints import MARKER, OWN_FOLDER, RESUME_ONLY_FILES, finished_checkpoints
from premem.encoding import CompletionCollator, ListDataset, build_features
from premem.errors import PremError
from premem.model import has_tokenizer, load_base

LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


# ---- checkpoints --------------------------------------------------------------------------------


@contextlib.contextmanager
def _plain_forward(model):
    """Undo accelerate's mixed-precision wrapper of model.forward while recording: on a GPU the
    Trainer autocasts to bf16, and a float32 model would then meet bf16 activations in its float32
    KV cache. The record is taken in the model's own dtype."""
    original = getattr(model, "_original_forward", None)
    if original is None or "forward" not in vars(model):
        yield
        return
    wrapped = model.forward
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


@contextlib.contextmanager
def recording(model):
    """Measure a model in the middle of training and leave training as it was: eval mode inside,
    the model's own forward (not accelerate's autocast wrapper), and every RNG stream (data order,
    dropout) restored afterwards, so a run that is recorded trains exactly as one that is not."""
    was_training = model.training
    model.eval()
    try:
        with rng.kept(), _plain_forward(model):
            yield model
    finally:
        model.train(was_training)


def _checkpoint_callback(save_every, epochs, on_checkpoint, keep_optimizer):
    class EpochCheckpoints(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kw):
            epoch = round(state.epoch)
            if epoch % save_every == 0 or epoch == epochs:
                control.should_save = True
            return control

        def on_save(self, args, state, control, model=None, **kw):
            step, epoch = state.global_step, round(state.epoch)
            path = Path(args.output_dir) / f"checkpoint-{step}"
            losses = [h["loss"] for h in state.log_history if "loss" in h and h.get("step") == step]
            if on_checkpoint is not None:
                # The recorder samples; keep that from shifting the training RNG streams, so an
                # interrupted-and-resumed run matches an uninterrupted one.
                with recording(model):
                    on_checkpoint(step, epoch, model)
            rec = {"step": step, "epoch": epoch, "loss": losses[-1] if losses else None}
            if state.is_world_process_zero:
                io.write_text(path / MARKER, json.dumps(rec, sort_keys=True) + "\n")  # read by recording jobs
                if keep_optimizer == "last":  # only the newest checkpoint is ever resumed from
                    for old in finished_checkpoints(args.output_dir):
                        if old["step"] < step:
                            for name in RESUME_ONLY_FILES:
                                (old["path"] / name).unlink(missing_ok=True)
            return control

    return EpochCheckpoints()


# ---- finetuning ---------------------------------------------------------------------------------

DDP_TIMEOUT_S = 1800  # TrainingArguments.ddp_timeout's default


@contextlib.contextmanager
def _threads_kept():
    """accelerate sets torch's thread count for a group of CPU processes (cores / processes, unless
    OMP_NUM_THREADS is set); premem's runs keep theirs (one, on a CPU), whatever the launch."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def rank0_value(value):
    """Rank 0's `value`, on every process of a multi-process launch (alone: `value`): ranks that
    decide apart whether to train a run could part ways, one training while the others do not."""
    if launcher.world_size() == 1:
        return value
    wait_for_ranks()  # the group, made now if not yet
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def wait_for_ranks() -> None:
    """Under a multi-process launch (torchrun, accelerate), wait here for every process; alone, return."""
    if launcher.world_size() > 1:
        from datetime import timedelta

        from accelerate import PartialState

        # cpu=True on a CPU: else accelerate sees no GPU group to join and every rank goes on alone.
        # The group outlives this call (the Trainer reuses it): give it the Trainer's own timeout.
        with _threads_kept():
            state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=DDP_TIMEOUT_S))
        state.wait_for_everyone()


def apply_lora(model, lora: dict, seed: int = 0):
    """Wrap model in a peft LoRA adapter; only adapter weights stay trainable.

    lora keys: r (8), alpha (16), dropout (0.0), target_modules ("all-linear").
    A 4-bit model (QLoRA) is first prepared with peft's prepare_model_for_kbit_training.
    """

    if isinstance(model, PeftModel):
        return model
    unknown = set(lora) - LORA_KEYS
    if unknown:
        raise PremError(f"unknown lora key(s) {sorted(unknown)}; allowed: {sorted(LORA_KEYS)}")
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(task_type="CAUSAL_LM", r=lora.get("r", 8), lora_alpha=lora.get("alpha", 16),
                        lora_dropout=lora.get("dropout", 0.0),
                        target_modules=lora.get("target_modules", "all-linear"))
    set_seed(seed)  # the adapter's A matrices are random
    return get_peft_model(model, config)


def finetune(model, tokenizer, prompts: list[str], targets: list[str], *, output_dir, lr: float,
             epochs: int, batch_size: int, warmup_ratio: float = 0.1, warmup_steps: int | None = None,
             weight_decay: float = 0.0, max_grad_norm: float = 1.0, mixed_precision: str = "auto",
             max_length: int | None = None, add_eos: bool = True, per_device_batch_size: int | None = None,
             seed: int = 0,
             save_every_epochs: int = 1, lora: dict | None = None, on_checkpoint=None,
             resume: bool = True, keep_optimizer: str = "last", progress: bool = True) -> list[dict]:
    """Finetune on (prompt, target) pairs; return the finished checkpoints [{step, epoch, path, loss}].

    Checkpoints are output_dir/checkpoint-<step> (Trainer layout: model or LoRA adapter, tokenizer,
    trainer_state.json, optimiser state) at the end of every `save_every_epochs` epochs and of the
    last epoch; step = epoch * ceil(n_examples / batch_size). `on_checkpoint(step, epoch, model)`
    runs at each new checkpoint (model in eval mode, RNG state restored afterwards); the checkpoint
    counts as finished only once it returns, so a crash inside it redoes that epoch on resume.

    resume=True continues from the last finished checkpoint with epoch <= epochs: finished epochs are
    not redone (with a larger `epochs` the linear schedule is recomputed for the new total).
    resume=False refuses to touch an output_dir that already holds checkpoints.
    keep_optimizer="last" deletes optimiser/scheduler state from all but the newest checkpoint (they
    are only needed to resume, and are 2x the model for full finetuning); "all" keeps them.
    Under `accelerate launch` every process runs on_checkpoint (rank 0 alone writes the markers).
    With `lora`, `model` is wrapped in place by peft (see apply_lora); pass the 4-bit model from
    load_base(quantization="4bit") for QLoRA.
    """

    if keep_optimizer not in ("last", "all"):
        raise PremError(f"keep_optimizer must be 'last' or 'all', got {keep_optimizer!r}")
    if not 0 <= warmup_ratio < 1:
        raise PremError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if warmup_steps is not None and warmup_steps < 0:
        raise PremError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if epochs < 1 or save_every_epochs < 1 or batch_size < 1:
        raise PremError(f"epochs, save_every_epochs and batch_size must be >= 1 "
                        f"(got {epochs}, {save_every_epochs}, {batch_size})")
    output_dir = Path(output_dir)
    done = [c for c in finished_checkpoints(output_dir) if c["epoch"] <= epochs]
    if done and not resume:
        raise PremError(f"{output_dir} already holds checkpoints; resume=False will not overwrite them")
    # A folder without the marker was cut off mid-save (or mid-recording): it will be redone. Only in
    # a folder premem trains in (OWN_FOLDER): another trainer's checkpoints carry no marker either.
    unmarked = [f for f in output_dir.glob("checkpoint-*") if f.is_dir() and not (f / MARKER).is_file()]
    # (finished checkpoints mark a folder premem trained in before OWN_FOLDER was written)
    if unmarked and not ((output_dir / OWN_FOLDER).is_file() or finished_checkpoints(output_dir)):
        raise PremError(f"{output_dir} holds checkpoints premem did not write ({unmarked[0].name}, ...): train "
                        "into a new folder (premem record scores another trainer's checkpoints)")
    if launcher.rank() == 0:  # by one process of a multi-process launch
        io.write_text(output_dir / OWN_FOLDER, "premem trains here: its unfinished checkpoints are redone\n")
        for folder in unmarked:
            shutil.rmtree(folder)
    wait_for_ranks()

    # max_length (model_max_length) cuts examples as the authors' tokenizer did; without it an
    # example longer than the model's context is an error.
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    features = build_features(tokenizer, prompts, targets, max_length=max_length or context, add_eos=add_eos,
                              truncate=max_length is not None)
    if lora is not None:
        model = apply_lora(model, lora, seed=seed)
    if mixed_precision not in ("auto", "fp16", "bf16", "no"):
        raise PremError(f"mixed_precision must be auto, fp16, bf16 or no, got {mixed_precision!r}")
    if mixed_precision in ("fp16", "bf16") and not torch.cuda.is_available():
        raise PremError(f"mixed_precision: {mixed_precision} autocasts on a GPU, and none is here (auto: none on a CPU)")
    auto_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # never fp16/bf16 on CPU
    # batch_size is the optimiser's batch over every process: per-device batches times gradient
    # accumulation times the world size (torchrun / accelerate set WORLD_SIZE).
    world = launcher.world_size()
    per_device = per_device_batch_size or max(1, batch_size // world)
    accumulation, rest = divmod(batch_size, per_device * world)
    if rest or not accumulation:
        raise PremError(f"batch_size {batch_size} is no multiple of per_device_batch_size {per_device} x "
                        f"{world} processes")
    use_bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and auto_bf16)
    with _threads_kept():  # a group of CPU processes would set its own thread count
        args = TrainingArguments(
            output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
            learning_rate=lr, lr_scheduler_type="linear", optim="adamw_torch",
            warmup_steps=warmup_steps if warmup_steps is not None else warmup_ratio,  # float < 1 = ratio
            weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed, data_seed=seed,
            save_strategy="no",  # saving is driven by the epoch callback, every save_every_epochs
            save_only_model=False,  # resume needs optimiser, scheduler and RNG state
            logging_strategy="epoch", report_to="none", disable_tqdm=not progress,
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
            remove_unused_columns=False, bf16=use_bf16, fp16=mixed_precision == "fp16",
            # On a CPU, say so: without it accelerate makes no process group of torchrun's processes,
            # and each would train alone on the same files.
            use_cpu=not torch.cuda.is_available(),
            # Batches of similar lengths: char-level examples vary 2x in length (arith: 280 chars on
            # average, a random batch of 8 pads to ~400), and padding is compute spent on nothing.
            train_sampling_strategy="group_by_length")
        trainer = Trainer(model=model, args=args, train_dataset=ListDataset(features),
                          data_collator=CompletionCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                          callbacks=[_checkpoint_callback(save_every_epochs, epochs, on_checkpoint,
                                                          keep_optimizer)])
    if not progress:
        trainer.remove_callback(PrinterCallback)  # it prints the loss dict when tqdm is off
    trainer.train(resume_from_checkpoint=str(done[-1]["path"]) if done else None)
    return [c for c in finished_checkpoints(output_dir) if c["epoch"] <= epochs]


def load_checkpoint(path, *, base: str | None = None, dtype=None, device=None, trainable: bool = False,
                    pad_token: str = "eos", quantization: str | None = None, tokenizer: str | None = None,
                    trust_remote_code: bool = False):
    """(model, tokenizer) from a finetune checkpoint folder: a full model, or a LoRA adapter.

    An adapter is put on `base` (any load_base spec), by default the base recorded in its
    adapter_config.json (the base model's name_or_path when it was wrapped), quantised as in
    training (`quantization` 4bit: QLoRA) and with training's `pad_token`; `trainable` keeps its
    weights trainable, as they were in training (the gradient-variance predictor needs them).
    A full model without tokenizer files (a Trainer given no processing_class saves none) takes the
    tokenizer of `tokenizer`, the model training started from.
    """

    path = Path(path)
    config = path / "adapter_config.json"
    if not config.is_file():
        if not has_tokenizer(path) and not tokenizer:
            raise PremError(f"{path} holds no tokenizer (a Trainer given no processing_class saves none): name the "
                            "model training started from (premem record --base, or the params' base_model)")
        return load_base(str(path), dtype=dtype, device=device, pad_token=pad_token,
                         tokenizer=None if has_tokenizer(path) else tokenizer, trust_remote_code=trust_remote_code)

    base = base or json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise PremError(f"{config} names no base model; pass base= to load_checkpoint")
    # The base as training had it: with pad_token "add" its embeddings were resized before the adapter.
    model, tok = load_base(base, dtype=dtype, device=device, pad_token=pad_token, quantization=quantization,
                           trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable), tok
