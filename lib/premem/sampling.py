"""k sampled completions per prompt, the raw material of Kang et al.'s per-checkpoint accuracy.

At every checkpoint the paper samples k completions per training query at temperature 0.8 and
grades them. ``sample`` returns them as ``list[list[str]]`` (prompts x k), each cut before the stop
string (``"\\nDone."`` by the project's prompt format) and without it.

Two backends:

- ``"transformers"``: batched ``transformers`` ``generate`` with the KV cache, left padding and an attention
  mask, stopping on the stop string (transformers' ``StopStringCriteria``) or EOS. Pure temperature
  sampling: the model's own generation_config (top_k=50 by default, repetition penalties some
  checkpoints ship) is overridden so samples match vLLM's ``SamplingParams`` semantics.
  Reproducible: each batch re-seeds torch from ``(seed, batch index)`` inside a forked RNG (the
  caller's global RNG is untouched), so a batch's samples do not depend on earlier batches.
  Results do depend on ``batch_size`` and on the set of prompts (they decide the batches).
- ``"vllm"``: ``vllm.LLM`` + ``SamplingParams(n=k, ...)``, for GPUs. vLLM loads weights itself, so
  ``model`` must be a path (a saved checkpoint folder or hub id) or an existing ``vllm.LLM``; it is
  imported lazily. Each prompt gets seed ``seed + index`` so prompts do not share random streams.
- ``"auto"``: vLLM when it is importable, CUDA is available and ``model`` is a path or a
  ``vllm.LLM``; otherwise transformers.

``temperature=0`` means greedy decoding in both backends (k identical completions).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from premem.errors import PremError

__all__ = ["sample", "truncate_at_stop"]

BACKENDS = ("auto", "transformers", "vllm")


def truncate_at_stop(text: str, stop: str | None) -> str:
    """``text`` up to (not including) the first occurrence of ``stop``."""
    if not stop:
        return text
    cut = text.find(stop)
    return text if cut < 0 else text[:cut]


def _is_vllm_llm(model) -> bool:
    return type(model).__module__.startswith("vllm") and type(model).__name__ == "LLM"


def _pick_backend(backend: str, model) -> str:
    if backend not in BACKENDS:
        raise PremError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        path_like = isinstance(model, str) or _is_vllm_llm(model)
        has_vllm = importlib.util.find_spec("vllm") is not None
        return "vllm" if path_like and has_vllm and torch.cuda.is_available() else "transformers"
    return backend


def sample(model, tokenizer, prompts: Sequence[str], *, k: int, temperature: float = 0.8,
           top_p: float = 1.0, max_new_tokens: int = 256, stop: str | None = "\nDone.",
           seed: int = 0, batch_size: int = 64, backend: str = "auto",
           progress: bool = True) -> list[list[str]]:
    """k completions for each prompt, in prompt order, each truncated before ``stop``.

    ``model`` is a loaded ``PreTrainedModel`` (backend "transformers"), or a checkpoint path / ``vllm.LLM``
    (backend "vllm"; with "transformers" a path is loaded with ``AutoModelForCausalLM``). ``batch_size``
    counts generated sequences per ``generate`` call (prompts per call = batch_size // k, at least
    one). ``tokenizer`` may be ``None`` for vLLM, which then uses the checkpoint's tokenizer.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise PremError(f"k must be an integer >= 1, got {k!r}")
    if temperature < 0:
        raise PremError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise PremError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1 or batch_size < 1:
        raise PremError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    if isinstance(prompts, str):
        raise PremError("prompts must be a list of strings, got a single string")
    prompts = list(prompts)
    if not prompts:
        return []
    chosen = _pick_backend(backend, model)
    if chosen == "vllm":
        return _sample_vllm(model, tokenizer, prompts, k=int(k), temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, stop=stop, seed=seed, progress=progress)
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(model)
    if tokenizer is None:
        raise PremError("the transformers backend needs a tokenizer, got None")
    return _sample_hf(model, tokenizer, prompts, k=int(k), temperature=temperature, top_p=top_p,
                      max_new_tokens=max_new_tokens, stop=stop, seed=seed, batch_size=batch_size,
                      progress=progress)


def _eos_ids(model, tokenizer) -> list[int]:
    # The tokenizer's EOS (appended to training targets) plus any the checkpoint declares.
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen_eos if isinstance(gen_eos, list) else ([gen_eos] if gen_eos is not None else [])
    return list(dict.fromkeys(ids))


def _generation_config(model, tokenizer, *, k, temperature, top_p, max_new_tokens, stop) -> GenerationConfig:
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    greedy = temperature == 0
    # Every filter is set explicitly: generate() fills unset fields from the model's
    # generation_config and then from global defaults (top_k=50), which would silently change the
    # sampling distribution away from plain temperature sampling.
    return GenerationConfig(
        do_sample=not greedy, temperature=1.0 if greedy else temperature,
        top_p=1.0 if greedy else top_p, top_k=0, min_p=None if greedy else 0.0,
        typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0, epsilon_cutoff=0.0,
        eta_cutoff=0.0, min_length=0, num_beams=1, length_penalty=1.0,
        max_new_tokens=max_new_tokens, num_return_sequences=1 if greedy else k, eos_token_id=eos or None,
        pad_token_id=pad, use_cache=True, stop_strings=[stop] if stop else None)


def _batch_seed(seed: int, batch: int) -> int:
    # Independent, well-mixed streams per (seed, batch); plain seed + batch would make neighbouring
    # seeds share most of their batches' streams.
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _sample_hf(model, tokenizer, prompts, *, k, temperature, top_p, max_new_tokens, stop, seed,
               batch_size, progress) -> list[list[str]]:
    device = next(model.parameters()).device
    cfg = _generation_config(model, tokenizer, k=k, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens, stop=stop)
    enc = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    # Sorted by length so a batch has little padding; results are put back in prompt order.
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    per_call = max(1, batch_size // cfg.num_return_sequences)
    batches = [order[s:s + per_call] for s in range(0, len(order), per_call)]
    out: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    fork_devices = [device] if device.type == "cuda" else []
    try:
        for b, idx in enumerate(tqdm(batches, desc="sampling", disable=not progress)):
            width = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), width), cfg.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                ids[r, width - len(enc[i]):] = torch.tensor(enc[i])
                mask[r, width - len(enc[i]):] = 1
            with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
                torch.manual_seed(_batch_seed(seed, b))
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=cfg, tokenizer=tokenizer)
            # num_return_sequences repeats each prompt n times consecutively.
            texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            n = cfg.num_return_sequences
            for r, i in enumerate(idx):
                done = [truncate_at_stop(t, stop) for t in texts[r * n:(r + 1) * n]]
                out[i] = done if n == k else done * k  # greedy: one decode, k copies
    finally:
        model.train(was_training)
    return out


def _sample_vllm(model, tokenizer, prompts, *, k, temperature, top_p, max_new_tokens, stop, seed,
                 progress) -> list[list[str]]:
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise PremError(f"backend='vllm' needs the vllm package (pip install 'premem[gpu]'): {e}") from None
    if _is_vllm_llm(model):
        llm = model
    elif isinstance(model, str):
        tok = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "name_or_path", None) or None
        llm = LLM(model=model, tokenizer=tok, seed=seed)
    else:
        raise PremError("backend='vllm' needs a checkpoint path or a vllm.LLM as model, "
                        f"got {type(model).__name__} (save it with save_pretrained first)")
    greedy = temperature == 0
    # Greedy decodes once and copies (older vLLM rejects n > 1 with temperature 0). top_k and
    # min_p keep vLLM's "off" defaults; explicit SamplingParams do not read generation_config.json.
    n = 1 if greedy else k
    params = [SamplingParams(
        n=n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
        max_tokens=max_new_tokens, stop=[stop] if stop else None, include_stop_str_in_output=False,
        seed=seed + i) for i in range(len(prompts))]
    results = llm.generate(prompts, params, use_tqdm=progress)
    # vLLM returns one RequestOutput per prompt, in input order. Truncating again is a no-op
    # unless the stop string was split oddly by the incremental detokeniser.
    out = [[truncate_at_stop(c.text, stop) for c in res.outputs] for res in results]
    return out if n == k else [o * k for o in out]
