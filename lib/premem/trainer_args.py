"""A trainer's training_args.bin read safely: the run's lr, epochs and seed for `premem record`.

The file is a pickle from a user's folder. It is read with torch's weights-only unpickler and an
allowlist of the classes a TrainingArguments pickle names, never a bare unpickle, which would run
whatever the file says. Apart from premem.checkpoints, which lists checkpoint folders without
importing torch or transformers.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from accelerate.state import PartialState
from accelerate.utils.dataclasses import DistributedType
from transformers.trainer_pt_utils import AcceleratorConfig
from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames, TrainingArguments

from premem.checkpoints import state_number


def training_arguments(checkpoint: Path) -> dict:
    """lr, epochs and seed of the run that saved `checkpoint`, from the Trainer's training_args.bin
    (HF Trainer and TRL save it in every checkpoint); None (seed 0) where it is absent or cannot be
    read safely. The file is a pickle from a user's folder: it is read with torch's weights-only
    unpickler and an allowlist of the classes a TrainingArguments pickle names (`_trainer_classes`),
    never a bare unpickle, which would run whatever the file says."""
    f = checkpoint / "training_args.bin"
    epochs = state_number(checkpoint, "num_train_epochs")
    if not f.is_file():
        return dict(lr=None, epochs=epochs, seed=0)
    try:
        with torch.serialization.safe_globals(_trainer_classes()):
            args = torch.load(f, weights_only=True)
        return dict(lr=float(args.learning_rate), epochs=epochs if epochs is not None else args.num_train_epochs,
                    seed=int(args.seed))
    except Exception as e:  # another library version's classes, or not a TrainingArguments at all
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        warnings.warn(f"{f}: not read (only a TrainingArguments pickle of known classes is: {reason}); "
                      "the run's lr and seed are left empty", stacklevel=2)
        return dict(lr=None, epochs=epochs, seed=0)


def _trainer_classes() -> list:
    """The classes a transformers TrainingArguments pickle names (transformers 5, accelerate 1)."""
    return [TrainingArguments, OptimizerNames, PartialState, DistributedType, AcceleratorConfig, HubStrategy,
            IntervalStrategy, SaveStrategy, SchedulerType, torch.device]
