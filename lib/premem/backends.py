"""The engines that measure a checkpoint: k sampled answers per question, and the gold targets' NLL.

A backend is one `Backend` entry in `BACKENDS`. What the recorder, the stages, the sweep, the
callback and the params' checks need to know of an engine is in its entry, so a new engine is its
module plus one entry here:

- ``"transformers"``: premem's own decoding loop (premem.sampling) and batched teacher forcing
  (premem.perplexity) on the model the recorder has loaded.
- ``"vllm"``: ``vllm.LLM`` on CUDA or vLLM's CPU build (premem.vllm_backend), one engine per
  recording process serving both measurements from the saved checkpoint folder.
- ``"auto"``: transformers for a loaded model, which is what the recorder holds (on a CPU that is
  what a measurement says: vLLM's CPU build sampled slower than transformers for the CPU default's
  model and for SmolLM2-135M, before its engine start: docs/engines.md); in `sample`, vLLM where a
  path or a ``vllm.LLM`` is given, vLLM is installed and CUDA is here.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from premem import perplexity, sampling, vllm_backend
from premem.errors import PremError


@dataclass(frozen=True)
class Backend:
    """One engine. `sample(cfg, lm, checkpoint, tok, prompts, k, seed, progress, context)` returns
    prompts x k completions cut before the stop string; `target_nll(cfg, lm, checkpoint, tok,
    prompts, targets, context)` the summed NLL of each target and its token count, as
    perplexity.target_nll defines them. `lm` is the loaded model, `checkpoint` its saved folder."""

    sample: Callable
    target_nll: Callable
    # One context length for a checkpoint's measurements (cfg, tok, prompts, targets), or None.
    context: Callable | None = None
    # An engine of its own that loads the saved folder: a checkpoint is recorded in a process of its
    # own (an engine's memory comes back for certain only when its process ends), never inside a
    # Trainer's process, and the baselines' model waits in CPU memory until `release` has run.
    engine: bool = False
    release: Callable | None = None
    # A params combination the engine cannot measure as trained (params dict -> reason, or None).
    refuses: Callable[[dict], str | None] = lambda params: None


def _transformers_sample(cfg, lm, checkpoint, tok, prompts, k, seed, progress, context):
    return sampling.sample(lm, tok, prompts, k=k, temperature=cfg.temperature, top_p=cfg.top_p,
                           max_new_tokens=cfg.max_new_tokens, stop=cfg.stop, seed=seed,
                           batch_size=cfg.sample_batch_size, progress=progress)


def _transformers_nll(cfg, lm, checkpoint, tok, prompts, targets, context):
    return perplexity.target_nll(lm, tok, prompts, targets, batch_size=cfg.perplexity_batch_size,
                                 add_eos=cfg.target_eos, max_length=cfg.model_max_length, progress=False)


def _vllm_sample(cfg, lm, checkpoint, tok, prompts, k, seed, progress, context):
    # the process's one engine, at the params' dtype, on the checkpoint's own weights
    return vllm_backend.sample(str(checkpoint), prompts, k=k, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.max_new_tokens, stop=cfg.stop, seed=seed, tokenizer=tok,
                               dtype=cfg.dtype, max_model_len=context, pad_token=cfg.pad_token, progress=progress)


def _vllm_nll(cfg, lm, checkpoint, tok, prompts, targets, context):
    # the engine that sampled scores the targets too
    return vllm_backend.target_nll(checkpoint, tok, prompts, targets, add_eos=cfg.target_eos, dtype=cfg.dtype,
                                   max_model_len=context, pad_token=cfg.pad_token, max_length=cfg.model_max_length)


def _vllm_context(cfg, tok, prompts, targets):
    return vllm_backend.needed_length(tok, prompts, targets, cfg.max_new_tokens, cfg.target_eos)


def _vllm_refuses(params: dict) -> str | None:
    if params.get("quantization"):
        return ("vllm serves an adapter merged into a float copy of its base, not the 4-bit base a QLoRA adapter "
                "was trained on; record it with backend transformers")
    return None


BACKENDS = {
    "transformers": Backend(sample=_transformers_sample, target_nll=_transformers_nll),
    "vllm": Backend(sample=_vllm_sample, target_nll=_vllm_nll, context=_vllm_context, engine=True,
                    release=vllm_backend.release, refuses=_vllm_refuses),
}


def names() -> tuple[str, ...]:
    """What the params' `backend` key takes."""
    return ("auto", *BACKENDS)


def get(name: str) -> Backend:
    """The entry the params' `backend` names ("auto": transformers, the recorder's model is loaded)."""
    if name not in names():
        raise PremError(f"key 'backend': unknown {name!r}; known: {', '.join(names())}")
    return BACKENDS["transformers" if name == "auto" else name]


def check(params: dict, source: str = "params") -> None:
    """The params' backend exists and can measure what they train: one line naming the key."""
    name = params.get("backend", "auto")
    if name not in names():
        raise PremError(f"{source}: key 'backend': unknown {name!r}; known: {', '.join(names())}")
    reason = get(name).refuses(params)
    if reason:
        raise PremError(f"{source}: key 'backend': {reason}")


def _is_vllm_llm(model) -> bool:
    return type(model).__module__.startswith("vllm") and type(model).__name__ == "LLM"


def sample(model, tokenizer, prompts, *, k: int, backend: str = "auto", progress: bool = True,
           **decoding) -> list[list[str]]:
    """k completions per prompt by a backend named directly, outside a record: `model` is a loaded
    model (transformers; a path is loaded with AutoModelForCausalLM), or a checkpoint path or a
    ``vllm.LLM`` (vLLM, which reads the path's tokenizer when `tokenizer` is None). `decoding`:
    temperature, top_p, max_new_tokens, stop, seed, and batch_size for transformers."""
    if backend not in names():
        raise PremError(f"backend must be one of {names()}, got {backend!r}")
    path_like = isinstance(model, str) or _is_vllm_llm(model)
    if backend == "auto":
        on_gpu = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
        backend = "vllm" if path_like and on_gpu else "transformers"
    if backend == "transformers":
        return sampling.sample(model, tokenizer, prompts, k=k, progress=progress, **decoding)
    if not path_like:
        raise PremError("backend='vllm' needs a checkpoint path or a vllm.LLM as model, "
                        f"got {type(model).__name__} (save it with save_pretrained first)")
    decoding.pop("batch_size", None)  # vLLM batches itself
    defaults = dict(temperature=0.8, top_p=1.0, max_new_tokens=256, stop="\nDone.", seed=0)
    return vllm_backend.sample(model, prompts, k=k, progress=progress, **(defaults | decoding))
