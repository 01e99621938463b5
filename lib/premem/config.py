"""One flat parameter schema, shared by papermill (notebook parameters) and Python (`load_params`).

A params file is flat YAML whose keys are the fields below; papermill injects those keys as notebook
variables, and `load_params` validates the same file for the CLI and the library. Defaults are the
embedded CPU default. Unknown keys and wrong types are errors that name the key and the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import string
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    n_heldout: int = Field(64, ge=0)  # training-split examples no run trains on (tau calibration)
    data_seed: int = 0
    prompt_template: str = "{question}\nAnswer:"
    target_template: str = " {solution}\nDone."
    stop: str = "\nDone."

    # Base model: "embedded" pretrains the small CPU model; else a hub id, a folder or a .gguf file.
    base_model: str = "embedded"
    embedded_pretrain_examples: int = Field(20000, ge=1)
    # Task options of the pretraining pool; None: task_options. A pool unlike the finetuning data
    # (e.g. fewer phrasings, arith's step_phrasings) leaves the base something to learn from
    # finetuning, as a hub model has.
    embedded_pretrain_task_options: Optional[dict] = None
    embedded_d_model: int = Field(128, ge=8)
    embedded_n_layers: int = Field(4, ge=1)
    embedded_n_heads: int = Field(4, ge=1)
    embedded_steps: int = Field(700, ge=1)
    embedded_lr: float = Field(3e-3, gt=0)
    embedded_batch_size: int = Field(16, ge=1)
    embedded_seq_len: int = Field(320, ge=8)  # in tokens; the longest prompt + solution must fit
    # "char": one token per character; "bpe": byte-level BPE trained on the pretraining texts
    # (embedded_vocab_size tokens, digits one per token), ~2.7x shorter sequences on arith.
    embedded_tokenizer: Literal["char", "bpe"] = "char"
    embedded_vocab_size: int = Field(800, ge=300)
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    quantization: Optional[Literal["4bit"]] = None
    lora: Optional[dict] = None  # LoRA adapter: {r, alpha, dropout, target_modules}; None = full finetuning

    # Finetuning grid: every combination of these is one run.
    lrs: list[float] = Field(default_factory=lambda: [3e-4, 1e-3, 3e-3], min_length=1)
    epochs: list[int] = Field(default_factory=lambda: [3, 10, 30], min_length=1)
    data_fractions: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.25], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0])  # [] in curation's params: its seeds are its own
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    save_every_epochs: int = Field(1, ge=1)
    # At most this many recorded checkpoints per run (the last epoch always among them): long runs
    # then save every ceil(epochs / max_checkpoints) epochs, bounding the recorder's cost.
    max_checkpoints: Optional[int] = Field(None, ge=1)
    keep_checkpoints: Literal["all", "last"] = "last"  # model weights kept once a run is recorded

    # Recording at each checkpoint: k samples per train and test query, perplexity of train targets.
    k: int = Field(4, ge=1)
    k_test: Optional[int] = Field(None, ge=1)  # defaults to k
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(160, ge=1)
    sample_batch_size: int = Field(256, ge=1)  # sequences per decoding batch (prompts x k)
    perplexity_batch_size: int = Field(64, ge=1)
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    workers: int = Field(2, ge=1)  # CPU: one torch thread per worker process

    # Claim 3, robustness to perturbed training queries (premem.robustness).
    # None: the most memorising run (dynamics.pick_run: most epochs, then highest lr, then the
    # largest data fraction, for the most examples per bin).
    robustness_run: Optional[str] = None
    perturbations: list[Literal["first", "we_know_that", "problem"]] = Field(
        default_factory=lambda: ["first", "we_know_that", "problem"])
    robustness_k: Optional[int] = Field(None, ge=1)  # samples per perturbed query; None: k
    robustness_seed: int = 0  # seeds the problem perturbation and the sampling

    # Claim 4, data curation (premem.curation).
    # Algorithm 1: round i trains from the base model on the originals plus everything
    # collected so far, then collects curation_rounds[i] examples similar to the originals whose
    # final pre-memorization accuracy is <= curation_threshold. Other strategies spend the same
    # budgets (the rules of premem.curation_rules.RULES; "iid" draws its budgets from curation_iid_rounds).
    curation_rounds: list[int] = Field(default_factory=lambda: [128, 128])
    curation_threshold: float = Field(0.75, ge=0, le=1)
    curation_strategies: list[str] = Field(default_factory=lambda: ["premem", "iid"])
    curation_seeds: list[int] = Field(default_factory=lambda: [0])
    curation_originals: Optional[int] = Field(None, ge=1)  # the n_train curation starts from; None: n_train
    curation_lr: Optional[float] = Field(None, gt=0)  # None: the first of lrs
    curation_epochs: Optional[int] = Field(None, ge=1)  # None: the first of epochs
    # Samples per original at each curation checkpoint: the train accuracy every selection reads
    # (test accuracy keeps k_test); None: k. Four samples make pre-mem accuracy coarse (0, 0.25, ...)
    # and two independent draws of 4 select about half the same originals.
    curation_k: Optional[int] = Field(None, ge=1)
    # At most this many recorded checkpoints per curation run (max_checkpoints is the sweep's); None:
    # every epoch, as Algorithm 1 scores. Fewer hide when an example was memorised: one memorised by
    # the first recorded checkpoint scores pre-mem accuracy 0, however early it was solved.
    curation_max_checkpoints: Optional[int] = Field(None, ge=1)
    curation_iid_rounds: Optional[list[int]] = None  # the IID scaling curve's budgets; None: curation_rounds
    # Score-ranked strategies take this fraction of the originals; None: as many as the
    # pre-memorization rule selects on the same round's model.
    curation_top_fraction: Optional[float] = Field(None, gt=0, le=1)
    pool_file: Optional[str] = None  # JSONL of {source_id, question, solution} variants (gsm8k, math)

    # Metric: memorization is log(log(perplexity)) < tau. tau_rule "fixed" uses tau as given;
    # "heldout" sets it to the tau_quantile of held-out training examples' log(log(perplexity))
    # over all checkpoints: below what almost any unseen solution scores, with no test labels.
    tau: float = -2.3
    tau_rule: Literal["fixed", "heldout"] = "fixed"
    tau_quantile: float = Field(0.05, gt=0, lt=1)

    # Figures.
    example_map_run: Optional[str] = None  # run drawn in the per-example map; None: the first run
    example_map_size: int = Field(200, ge=1)  # training examples drawn in the map

    # The authors' released logs (notebook 01): one folder, several datasets, each fitted on its own
    # (premem.released: a run's dataset is its name's prefix). None: every dataset in the folder.
    released_datasets: Optional[list[str]] = None
    # Memorization threshold per dataset; a dataset not listed takes the authors' own
    # (released.AUTHORS_TAU), and one the authors did not release must be listed.
    released_taus: dict[str, float] = Field(default_factory=dict)
    example_map_runs: list[str] = Field(default_factory=list)  # runs mapped per example; []: each dataset's first

    # Paths: relative ones are taken from the project root (the folder holding params/), so
    # notebooks run from notebooks/ and the CLI run from anywhere write to the same place.
    released_logs: Optional[str] = None  # the authors' ckpts folder; else $PREMEM_RELEASED_LOGS
    out_dir: str = "runs"
    cache_dir: str = ".cache/premem"
    figures_dir: str = "figures"

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, v):
        if any(not lr > 0 for lr in v):  # also NaN
            raise ValueError(f"learning rates must be > 0, got {v}")
        return v

    @field_validator("epochs")
    @classmethod
    def _positive_epochs(cls, v):
        if any(e < 1 for e in v):
            raise ValueError(f"epochs must be >= 1, got {v}")
        return v

    @field_validator("data_fractions")
    @classmethod
    def _fractions(cls, v):
        if any(not 0 < f <= 1 for f in v):
            raise ValueError(f"data fractions must be in (0, 1], got {v}")
        return v

    @field_validator("tau", "temperature", "embedded_lr")
    @classmethod
    def _finite(cls, v):
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v

    @field_validator("prompt_template", "target_template")
    @classmethod
    def _template(cls, v, info):
        field = {"prompt_template": "question", "target_template": "solution"}[info.field_name]
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        except ValueError as e:  # an unmatched brace
            raise ValueError(f"{e} in {v!r}") from None
        if names != {field}:
            raise ValueError(f"must hold {{{field}}} and no other field, got {sorted(names) or 'none'} in {v!r}")
        return v

    def path(self, key: str) -> Path | None:
        value = getattr(self, key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else project_root() / p

    def hash(self, *extra_keys: str) -> str:
        """Content hash of the keys that shape a sweep's record (RECORD_KEYS, plus `extra_keys` for
        stages with keys of their own, such as CURATION_KEYS), naming record folders instead of
        config encoded in names. Analysis, path and worker keys are left out, so adding such a key,
        or changing one, never invalidates a finished record."""
        data = self.model_dump(mode="json")
        blob = json.dumps({k: data[k] for k in RECORD_KEYS + extra_keys}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# Keys whose values change what a sweep trains or records (sample_batch_size too: each batch of
# sampling is seeded on its own).
RECORD_KEYS = (
    "task", "task_options", "data_files", "n_train", "n_test", "n_heldout", "data_seed", "prompt_template",
    "target_template", "stop", "base_model", "embedded_pretrain_examples", "embedded_pretrain_task_options",
    "embedded_d_model",
    "embedded_n_layers", "embedded_n_heads", "embedded_steps", "embedded_lr", "embedded_batch_size",
    "embedded_seq_len", "embedded_tokenizer", "embedded_vocab_size", "dtype", "quantization", "lora", "lrs",
    "epochs", "data_fractions", "seeds", "batch_size",
    "warmup_ratio", "weight_decay", "max_grad_norm", "save_every_epochs", "max_checkpoints", "k", "k_test",
    "temperature", "top_p", "max_new_tokens", "sample_batch_size", "backend",
)

# curation_seeds and curation_strategies are left out: each (strategy, seed) chain of runs carries
# both in its runs' names and depends on nothing else the other chains do, so a curation folder holds
# any number of them and adding one reuses the rest (see premem.curation.curation_params).
# curation_originals and curation_k are left out too: curation_params folds them into n_train and k.
CURATION_KEYS = tuple(k for k in Params.model_fields if k.startswith("curation_") and k not in
                      ("curation_seeds", "curation_strategies", "curation_originals", "curation_k")) + ("pool_file",)


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
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"key '{key}': {msg}" + ("" if "got" in msg else f" (got {e.get('input')!r})"))
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
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise PremError(f"{path}: not valid YAML{where} ({what})") from None
        if data is None:  # the schema's defaults are not any run's settings: an empty file is a mistake
            raise PremError(f"{path}: empty; a params file names its keys (params/tiny.yaml is the CPU default)")
        if not isinstance(data, dict):
            raise PremError(f"{path}: must be a mapping of keys to values")
        name = str(path)
    data.update(overrides)
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise PremError(_format_error(e, name)) from None


def from_notebook(namespace: dict) -> Params:
    """The params of a notebook run, from its variables.

    A notebook's parameters cell holds only `params_file` (the CPU default). `papermill -f X.yaml`
    injects X's flat keys as variables: when any schema key is present they are the whole config
    (schema defaults for the rest, as `load_params(X.yaml)` gives); otherwise `params_file` is read.
    """
    keys = {k: namespace[k] for k in Params.model_fields if k in namespace}
    if keys:
        return load_params(keys)
    if "params_file" not in namespace:
        raise PremError("notebook defines neither params_file nor any params key")
    path = Path(namespace["params_file"])
    return load_params(path if path.is_absolute() else project_root() / path)
