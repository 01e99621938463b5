"""One flat parameter schema, shared by papermill (notebook parameters) and Python (`load_params`).

A params file is flat YAML whose keys are the fields below; papermill injects those keys as notebook
variables, and `load_params` validates the same file for the CLI and the library. Defaults are the
embedded CPU default (params/tiny.yaml names no other key): the one place its values, and why
each is what it is, are written. Unknown keys and wrong types are errors that name the key and the file.
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


class RunEntry(BaseModel):
    """One run of an explicit run list (`runs:`), for grids that are no Cartesian product."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    lr: float = Field(gt=0)
    epochs: int = Field(ge=1)
    data_fraction: float = Field(1.0, gt=0, le=1)
    seed: int = 0


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
    # The CPU default pretrains on the first 3 phrasings of each step kind (all of mul's and div's, 3 of
    # add's and sub's 5): finetuning then teaches the base something (the 4 held-back phrasings). The
    # base gets 0.73 of test problems with seen phrasings only, 0.16 with one unseen and 0.03 with two
    # (0.43 overall); with every phrasing in pretraining, finetuning on 128-384 examples moved test
    # accuracy by about the seed noise, so claim 4 had no curve to measure.
    embedded_pretrain_task_options: Optional[dict] = Field(default_factory=lambda: {"step_phrasings": 3})
    embedded_d_model: int = Field(128, ge=8)
    embedded_n_layers: int = Field(4, ge=1)
    embedded_n_heads: int = Field(4, ge=1)
    embedded_steps: int = Field(1000, ge=1)
    embedded_lr: float = Field(3e-3, gt=0)
    embedded_batch_size: int = Field(16, ge=1)
    embedded_seq_len: int = Field(192, ge=8)  # in tokens; the longest arith prompt + solution is 151
    # "char": one token per character; "bpe": byte-level BPE trained on the pretraining texts
    # (embedded_vocab_size tokens, digits one per token): arith's sequences are ~2.7x shorter, which
    # made the whole reproduction ~3x faster (61 -> ~18 minutes) and the base stronger (test accuracy
    # 0.43 vs 0.18). The char base: `embedded_tokenizer: char`, `embedded_seq_len: 480`, `max_new_tokens: 180`.
    embedded_tokenizer: Literal["char", "bpe"] = "bpe"
    embedded_vocab_size: int = Field(800, ge=300)
    # Run the model folder's own Python (a config.json with auto_map), as transformers' trust_remote_code
    # does. Off: premem runs no code from a folder it is given, and refuses such a folder in one line.
    trust_remote_code: bool = False
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    quantization: Optional[Literal["4bit"]] = None
    lora: Optional[dict] = None  # LoRA adapter: {r, alpha, dropout, target_modules}; None = full finetuning

    # Finetuning grid: every combination of these is one run. The CPU default's 12 runs span runs that
    # generalise and runs that memorise; >= 128 examples per run (pre-mem accuracy over 32, a quarter
    # of 128, was too noisy).
    lrs: list[float] = Field(default_factory=lambda: [1e-4, 5e-4, 2e-3], min_length=1)
    epochs: list[int] = Field(default_factory=lambda: [3, 15], min_length=1)
    data_fractions: list[float] = Field(default_factory=lambda: [1.0, 0.5], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0])  # [] in curation's params: its seeds are its own
    batch_size: int = Field(8, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    save_every_epochs: int = Field(1, ge=1)
    # An explicit run list instead of the product of lrs x epochs x data_fractions x seeds (the
    # authors' grid is no product); a file gives one or the other, never both.
    runs: Optional[list[RunEntry]] = None
    # Added after records were named by their hash (LATER_RECORD_KEYS): each default is what premem
    # did before the key existed, and a key enters the hash only when set away from it.
    warmup_steps: Optional[int] = Field(None, ge=0)  # None: warmup_ratio of the training steps
    # auto: bf16 autocast on a GPU that has it, none on a CPU; fp16/bf16: the Trainer's autocast over
    # float32 weights (the authors: fp16 for GSM8k, bf16 for MATH); no: none.
    mixed_precision: Literal["auto", "fp16", "bf16", "no"] = "auto"
    model_max_length: Optional[int] = Field(None, ge=8)  # tokens per training example; None: the context
    target_eos: bool = True  # end every target with eos (the authors' targets end at "\nDone." alone)
    pad_token: Literal["eos", "add"] = "eos"  # a tokenizer with none: reuse eos, or add [PAD] and resize
    # Examples per device and step; the Trainer accumulates gradients up to batch_size over all
    # devices (the authors: 2 per device on 4 GPUs for GSM8k's 128). None: batch_size split over the
    # processes (one process: batch_size, as before this key).
    per_device_batch_size: Optional[int] = Field(None, ge=1)
    # At most this many recorded checkpoints per run (the last epoch always among them): long runs
    # then save every ceil(epochs / max_checkpoints) epochs, bounding the recorder's cost.
    max_checkpoints: Optional[int] = Field(3, ge=1)  # None: every save_every_epochs
    keep_checkpoints: Literal["all", "last"] = "last"  # model weights kept once a run is recorded

    # Recording at each checkpoint: k samples per train and test query, perplexity of train targets.
    k: int = Field(4, ge=1)
    k_test: Optional[int] = Field(4, ge=1)  # None: k
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)  # BPE tokens; the longest arith gold solution is 77
    sample_batch_size: int = Field(256, ge=1)  # sequences per decoding batch (prompts x k)
    perplexity_batch_size: int = Field(64, ge=1)
    backend: str = "auto"  # auto or a key of premem.backends.BACKENDS (checked there, with what it refuses)
    workers: int = Field(2, ge=1)  # CPU: one torch thread per worker process
    # together: a run records each checkpoint inside its training process, as it is saved.
    # separate: the run trains first, then a fresh process records its saved checkpoints, so an
    # inference engine (vLLM) never shares a process (or its GPU memory) with a Trainer. The record
    # is the same either way.
    stages: Literal["together", "separate"] = "together"
    # Beyond one machine (premem.launcher): local runs here; slurm submits one job per run through
    # submitit (its local executor where there is no Slurm, or with slurm_cluster: local).
    launcher: Literal["local", "slurm"] = "local"
    slurm_cluster: Optional[Literal["slurm", "local", "debug"]] = None  # None: Slurm if sbatch is here
    slurm_partition: Optional[str] = None
    slurm_gpus: Optional[int] = Field(None, ge=0)  # GPUs per job (a training job's, with stages: separate)
    slurm_train_tasks: Optional[int] = Field(None, ge=1)  # processes per training job; None: one per GPU
    slurm_record_gpus: Optional[int] = Field(None, ge=0)  # per recording job (separate); None: 1 if slurm_gpus
    slurm_time: int = Field(240, ge=1)  # minutes per job; a job past it is requeued and resumes
    slurm_cpus: Optional[int] = Field(None, ge=1)
    slurm_mem_gb: Optional[int] = Field(None, ge=1)

    # Claim 3, robustness to perturbed training queries (premem.robustness).
    # None: the most memorising run (dynamics.pick_run: most epochs, then highest lr, then the
    # largest data fraction, for the most examples per bin).
    robustness_run: Optional[str] = None
    perturbations: list[str] = Field(  # keys of premem.robustness.PERTURBATIONS (checked there)
        default_factory=lambda: ["first", "we_know_that", "problem"])
    robustness_k: Optional[int] = Field(None, ge=1)  # samples per perturbed query; None: k
    robustness_seed: int = 0  # seeds the problem perturbation and the sampling

    # Claim 4, data curation (premem.curation).
    # Algorithm 1: round i trains from the base model on the originals plus everything
    # collected so far, then collects curation_rounds[i] examples similar to the originals whose
    # final pre-memorization accuracy is <= curation_threshold. Other strategies spend the same
    # budgets (the rules of premem.curation_rules.RULES; "iid" draws its budgets from curation_iid_rounds).
    # The CPU default: 128 originals, two rounds of 64 new examples, the i.i.d. curve run further for
    # the data-efficiency ratio; 5 epochs at lr 5e-4 (the paper trains curation rounds 3 epochs; on the
    # char-level base 15 epochs gave ~0.03 more test accuracy than 5 at 3x the time).
    curation_rounds: list[int] = Field(default_factory=lambda: [64, 64])
    # The paper's 0.75. Pre-mem accuracies on the CPU default's base average ~0.76 (median 1.0), and
    # 0.25 (chosen for the char-level base, whose mean was ~0.3) selected only 13-25 of 128 originals.
    curation_threshold: float = Field(0.75, ge=0, le=1)
    # Every rule of the paper's comparison but `hardest`, which on arith (no difficulty level) ranks
    # by step count, as most_steps does. Adding or dropping one adds or drops its runs in the same folder.
    curation_strategies: list[str] = Field(default_factory=lambda: [
        "premem", "iid", "ifd", "low_train_acc", "most_steps", "high_loss", "forgetting"])
    curation_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])  # training, selection, collection
    curation_originals: Optional[int] = Field(128, ge=1)  # the n_train curation starts from; None: n_train
    curation_lr: Optional[float] = Field(5e-4, gt=0)  # None: the first of lrs
    curation_epochs: Optional[int] = Field(5, ge=1)  # None: the first of epochs
    # Samples per original at each curation checkpoint: the train accuracy every selection reads
    # (test accuracy keeps k_test); None: k. Four samples make pre-mem accuracy coarse (0, 0.25, ...)
    # and two independent draws of 4 select about half the same originals; 16 steadies the selection
    # but took premem's round-1 lead away (1.51x -> 1.14x; seeds 0-5, scripts/curation_k.py, docs/findings.md).
    curation_k: Optional[int] = Field(None, ge=1)
    # At most this many recorded checkpoints per curation run (max_checkpoints is the sweep's); None:
    # every epoch, as Algorithm 1 scores. Fewer hide when an example was memorised: one memorised by
    # the first recorded checkpoint scores pre-mem accuracy 0, however early it was solved (with epochs
    # 2, 4 and 5 only, premem's ratios were 1.30x / 1.17x instead of 1.62x / 1.37x, 3 seeds).
    curation_max_checkpoints: Optional[int] = Field(None, ge=1)
    curation_iid_rounds: Optional[list[int]] = Field(  # the i.i.d. curve's budgets; None: curation_rounds
        default_factory=lambda: [64, 64, 128])
    # Score-ranked strategies take this fraction of the originals; None: as many as the
    # pre-memorization rule selects on the same round's model.
    curation_top_fraction: Optional[float] = Field(None, gt=0, le=1)
    pool_file: Optional[str] = None  # JSONL of {source_id, question, solution} variants (gsm8k, math)

    # Metric: memorization is log(log(perplexity)) < tau. tau_rule "fixed" uses tau as given;
    # "heldout" sets it to the tau_quantile of held-out training examples' log(log(perplexity))
    # over all checkpoints: below what almost any unseen solution scores, with no test labels. A
    # params file (or dict) that writes tau without tau_rule means that tau: fixed (load_params).
    tau: float = -2.3
    tau_rule: Literal["fixed", "heldout"] = "heldout"  # the CPU default's model has its own scale
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
        keys = RECORD_KEYS + extra_keys
        if data["base_model"] != "embedded":  # the embedded model's keys shape only its own base
            keys = tuple(k for k in keys if not k.startswith("embedded_"))
        shaped = {k: data[k] for k in keys}
        shaped |= {k: data[k] for k in LATER_RECORD_KEYS if data[k] != Params.model_fields[k].get_default()}
        blob = json.dumps(shaped, sort_keys=True).encode()
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

# Record-shaping keys added since hashes named records: in the hash only when not at their default,
# so a record made before a key existed keeps its name (the default is the behaviour it was made with).
LATER_RECORD_KEYS = ("runs", "warmup_steps", "mixed_precision", "model_max_length", "target_eos", "pad_token",
                     "per_device_batch_size")

# curation_seeds and curation_strategies are left out: each (strategy, seed) chain of runs carries
# both in its runs' names and depends on nothing else the other chains do, so a curation folder holds
# any number of them and adding one reuses the rest (see premem.curation.curation_params).
# curation_originals and curation_k are left out too: curation_params folds them into n_train and k.
CURATION_FOLDED = ("curation_seeds", "curation_strategies", "curation_originals", "curation_k")
# Selections read pre-memorization accuracy, so the threshold's keys shape a curation folder too.
CURATION_KEYS = tuple(k for k in Params.model_fields if k.startswith("curation_") and k not in CURATION_FOLDED) + (
    "pool_file", "tau", "tau_rule", "tau_quantile")

# Keys a stage reads that do not change what it writes, and so stay out of every hash (a test spies
# on what the sweep and the curation read, and fails on a key in neither list).
NOT_SHAPING = (
    "name",  # names the folder beside the hash
    "out_dir", "cache_dir", "figures_dir",  # where things go
    "workers",  # runs are at one torch thread each whatever the worker count (launcher.map_one_thread)
    "stages",  # together or separate, the record is the same (tests/test_stages.py)
    # where jobs run and with what resources: the record is the same (tests/test_stages.py; the number
    # of training ranks moves float rounding, as DDP's all-reduce and sampler do)
    "launcher", "slurm_cluster", "slurm_partition", "slurm_gpus", "slurm_train_tasks", "slurm_record_gpus",
    "slurm_time", "slurm_cpus", "slurm_mem_gb",
    "keep_checkpoints",  # which weights are kept after a run is recorded
    "trust_remote_code",  # whether a folder's own model code may run: a model that loads is the same model
    # The perplexity batch moves float32 rounding only (padding; rtol 1e-5, tests/test_perplexity.py),
    # where a sampling batch reseeds its draws (sample_batch_size is hashed).
    "perplexity_batch_size",
    "tau_rule",  # the sweep reads it only to check held-out examples are given; tau is chosen on reading
)  # (a curation's selections do read the threshold: CURATION_KEYS holds tau, tau_rule and tau_quantile)


DEFAULT_PARAMS = "params/tiny.yaml"  # the CPU default: what `premem reproduce`, the ledger and the notebooks run
# Notebooks whose data come from a params file of their own, whatever `--params` says.
NOTEBOOK_PARAMS = {"01": "params/released_llama3-8b.yaml"}
SWITCH = "PREMEM_NOTEBOOK_PARAMS"  # a params file every live notebook reads instead of its own


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


def shown(path: str | Path) -> str:
    """A path as a notebook or table prints it: relative to the project root (stored outputs carry
    no machine's folders), a user's own path elsewhere as given."""
    path, root = Path(path), project_root()
    return str(path.relative_to(root) if path.is_absolute() and path.is_relative_to(root) else path)


def _reads_as_float(value) -> bool:
    """A string that was meant as a number: YAML reads 5e-7 (no dot) as text."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"key '{key}': {msg}" + ("" if "got" in msg else f" (got {e.get('input')!r})"))
            if e["type"] == "float_type" and _reads_as_float(e.get("input")):
                parts[-1] += f"; YAML reads {e['input']} as text: write it with a dot, e.g. 1.0e-5"
    return f"{source}: " + "; ".join(parts)


def _check_combinations(data: dict, source: str) -> None:
    """Rules across keys, on the keys set away from their defaults (a resolved config, as
    model_dump gives, names every key)."""
    fields = Params.model_fields
    given = {k for k, v in data.items() if k in fields and v != fields[k].get_default(call_default_factory=True)}
    grid = sorted({"lrs", "epochs", "data_fractions", "seeds"} & given)
    if data.get("runs") is not None and grid:
        raise PremError(f"{source}: key 'runs': an explicit run list replaces lrs, epochs, data_fractions and "
                        f"seeds; drop {', '.join(grid)} or drop runs")
    if data.get("runs") == []:
        raise PremError(f"{source}: key 'runs': an empty run list; give at least one run or drop the key")
    per_device, batch = data.get("per_device_batch_size"), data.get("batch_size", fields["batch_size"].default)
    if isinstance(per_device, int) and isinstance(batch, int) and per_device > 0 and batch % per_device:
        raise PremError(f"{source}: key 'per_device_batch_size': {per_device} does not divide batch_size {batch}")
    slurm = sorted(k for k in given if k.startswith("slurm_"))
    if data.get("launcher", "local") == "local" and slurm:
        raise PremError(f"{source}: key '{slurm[0]}': slurm_* options apply to launcher: slurm, and the launcher "
                        "is local")


MAX_PARAMS_BYTES = 256_000


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without YAML aliases: a params file is flat and needs none, and a few hundred bytes
    of nested aliases expand to gigabytes (in the error line, in config.json). A key given twice is
    refused too: YAML would keep the last silently, and which one was meant is the user's to say."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):  # params keys are names; anything else is the schema's to refuse
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}): params files use none; "
                                              "write each value out", event.start_mark)
        return super().compose_node(parent, index)


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
        if path.stat().st_size > MAX_PARAMS_BYTES:
            raise PremError(f"{path}: {path.stat().st_size} bytes; a params file is a page of flat keys (at most "
                            f"{MAX_PARAMS_BYTES // 1000} kB)")
        try:
            data = yaml.load(path.read_text(), Loader=_NoAliasLoader)
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
    if "tau" in data and "tau_rule" not in data:  # a threshold written out is the one meant
        data["tau_rule"] = "fixed"
    _check_combinations(data, name)
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
