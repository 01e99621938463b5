"""One flat parameter schema, shared by papermill (notebook parameters) and Python (`load_params`).

A params file is flat YAML whose keys are the fields below; papermill injects those keys as notebook
variables, and `load_params` validates the same file for the CLI and the library. Defaults are the
embedded CPU default. Unknown keys and wrong types are errors that name the key and the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from premem.errors import PremError


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = "tiny"

    # Task and data: which reasoning problems, how many, and how prompts and targets look.
    task: str = "arith"
    task_options: dict = Field(default_factory=dict)
    data_files: Optional[dict] = None  # {"train": path, "test": path} for gsm8k/math from local files
    n_train: int = Field(256, ge=1)
    n_test: int = Field(256, ge=1)
    data_seed: int = 0
    prompt_template: str = "{question}\nAnswer:"
    target_template: str = " {solution}\nDone."
    stop: str = "\nDone."

    # Base model: "embedded" pretrains the small CPU model; else a hub id, a folder or a .gguf file.
    base_model: str = "embedded"
    embedded_pretrain_examples: int = Field(20000, ge=1)
    embedded_d_model: int = Field(128, ge=8)
    embedded_n_layers: int = Field(4, ge=1)
    embedded_n_heads: int = Field(4, ge=1)
    embedded_steps: int = Field(700, ge=1)
    embedded_lr: float = Field(3e-3, gt=0)
    embedded_batch_size: int = Field(16, ge=1)
    embedded_seq_len: int = Field(320, ge=8)  # the longest prompt + solution must fit
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    quantization: Optional[Literal["4bit"]] = None
    lora: Optional[dict] = None  # LoRA adapter: {r, alpha, dropout, target_modules}; None = full finetuning

    # Finetuning grid: every combination of these is one run.
    lrs: list[float] = Field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    epochs: list[int] = Field(default_factory=lambda: [3, 10, 30])
    data_fractions: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.25])
    seeds: list[int] = Field(default_factory=lambda: [0])
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    save_every_epochs: int = Field(1, ge=1)
    keep_checkpoints: Literal["all", "last"] = "last"  # model weights kept once a run is recorded

    # Recording at each checkpoint: k samples per train and test query, perplexity of train targets.
    k: int = Field(4, ge=1)
    k_test: Optional[int] = Field(None, ge=1)  # defaults to k
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(160, ge=1)
    sample_batch_size: int = Field(64, ge=1)
    perplexity_batch_size: int = Field(64, ge=1)
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    workers: int = Field(2, ge=1)  # CPU: one torch thread per worker process

    # Claim 3, robustness to perturbed training queries (premem.robustness).
    # None: among the runs with the most epochs at the highest lr (the most memorising), the one with
    # the largest data fraction (most examples per bin), then the lowest seed.
    robustness_run: Optional[str] = None
    perturbations: list[Literal["first", "we_know_that", "problem"]] = Field(
        default_factory=lambda: ["first", "we_know_that", "problem"])
    robustness_k: Optional[int] = Field(None, ge=1)  # samples per perturbed query; None: k
    robustness_seed: int = 0  # seeds the problem perturbation and the sampling

    # Claim 4, data curation (premem.curation).
    # -- curation keys go here --

    # Metric.
    tau: float = -2.3  # memorization threshold on log(log(perplexity))

    # Figures.
    example_map_run: Optional[str] = None  # run drawn in the per-example map; None: the first run
    example_map_size: int = Field(200, ge=1)  # training examples drawn in the map

    # Paths: relative ones are taken from the project root (the folder holding params/), so
    # notebooks run from notebooks/ and the CLI run from anywhere write to the same place.
    released_logs: Optional[str] = None  # the authors' ckpts folder; else $PREMEM_RELEASED_LOGS
    out_dir: str = "runs"
    cache_dir: str = ".cache/premem"
    figures_dir: str = "figures"

    def path(self, key: str) -> Path | None:
        value = getattr(self, key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else project_root() / p

    def hash(self) -> str:
        """Content hash of the parameters, used to name run folders instead of encoding config in names."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def project_root() -> Path:
    """$PREMEM_ROOT, else the nearest folder at or above the working directory with params/ and
    pyproject.toml (a premem checkout), else the working directory."""
    if os.environ.get("PREMEM_ROOT"):
        return Path(os.environ["PREMEM_ROOT"])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return here


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"key '{key}': {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def load_params(source: str | Path | dict | None = None, **overrides) -> Params:
    """Validate a params file (or a dict, as a notebook builds from its parameters) into `Params`."""
    if source is None:
        data, name = {}, "defaults"
    elif isinstance(source, dict):
        data, name = dict(source), "parameters"
    else:
        path = Path(source)
        if not path.is_file():
            raise PremError(f"params file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise PremError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise PremError(f"{path}: must be a mapping of keys to values")
        name = str(path)
    data.update(overrides)
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise PremError(_format_error(e, name)) from None
