"""vLLM for both measurements at a checkpoint: sampled answers and the perplexity of gold targets.

One engine per process: `engine` keeps the last `vllm.LLM` it built and hands it back while the
weights are the same (train prompts, test prompts and perplexity of one checkpoint share it); a
new checkpoint's full weights replace it. A LoRA adapter does not: the engine is built on the base
once, with LoRA enabled, and each adapter checkpoint is a `LoRARequest`.

Perplexity reads `prompt_logprobs` of token-id prompts: prompt + target ids exactly as training
built them (`perplexity.encode_pairs`), so the label boundary is training's, not a re-tokenisation
of joined text; prefix caching is off (prompt logprobs of a cached prefix are not recomputed).
vLLM is imported here only, lazily: it is the GPU extra (`pip install 'premem[gpu]'`).
"""
from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import numpy as np

from premem.errors import PremError

_ENGINE: dict = {"key": None, "llm": None}


def _vllm():
    try:
        import vllm
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise PremError(f"backend vllm needs the vllm package (pip install 'premem[gpu]'): {e}") from None
    return vllm, TokensPrompt, LoRARequest


def adapter_base(checkpoint: str | Path) -> str | None:
    """The base model of a LoRA adapter folder (its adapter_config.json), None for a full model."""
    config = Path(checkpoint) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def engine(model: str, *, lora_rank: int | None = None, **options):
    """The process's engine for `model` (a folder or hub id), built once and reused; `lora_rank`:
    LoRA enabled, for adapters up to that rank. Randomness is per request (SamplingParams.seed),
    so no seed makes an engine of its own."""
    vllm, _, _ = _vllm()
    key = (str(model), lora_rank, tuple(sorted(options.items())))
    if _ENGINE["key"] != key:
        release()
        extra = dict(enable_lora=True, max_lora_rank=lora_rank) if lora_rank else {}
        _ENGINE["llm"] = vllm.LLM(model=str(model), seed=0, enable_prefix_caching=False, **extra, **options)
        _ENGINE["key"] = key
    return _ENGINE["llm"]


def release() -> None:
    """Drop the engine and what vLLM keeps beside it, as vLLM's own tests do between engines.
    Within one process this is best effort (vllm-project/vllm#3281, #21073): premem's recording
    stage gives each checkpoint a process of its own, whose exit frees the GPU for certain."""
    if _ENGINE["llm"] is None:
        return
    _ENGINE["llm"], _ENGINE["key"] = None, None
    gc.collect()
    import contextlib

    import torch

    with contextlib.suppress(ImportError, AttributeError):
        from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _for_checkpoint(checkpoint: str | Path, base: str | None, dtype: str | None = None):
    """(engine, lora_request or None) for a checkpoint folder: a full model, or an adapter on its base;
    `dtype` as the params' (None: vLLM's own choice from the checkpoint's config)."""
    options = {"dtype": dtype} if dtype else {}
    _, _, LoRARequest = _vllm()
    own_base = adapter_base(checkpoint)
    if own_base is None:
        return engine(str(checkpoint), **options), None
    rank = int(json.loads((Path(checkpoint) / "adapter_config.json").read_text()).get("r", 16))
    # vLLM sizes its LoRA slots by max_lora_rank, one of a few powers of two.
    slot = next((r for r in (8, 16, 32, 64, 128, 256, 512) if r >= rank), None)
    if slot is None:
        raise PremError(f"{checkpoint}: LoRA rank {rank} is above what vLLM serves (512)")
    # A request's integer id must be unique per adapter for the engine's cache of loaded adapters.
    lora_id = int(hashlib.sha256(str(Path(checkpoint).resolve()).encode()).hexdigest()[:7], 16) + 1
    llm = engine(base or own_base, lora_rank=slot, **options)
    return llm, LoRARequest(Path(checkpoint).name, lora_id, str(checkpoint))


def sample(checkpoint, prompts, *, k: int, temperature: float, top_p: float, max_new_tokens: int,
           stop: str | None, seed: int, base: str | None = None, dtype: str | None = None,
           progress: bool = False) -> list[list[str]]:
    """k completions per prompt from a checkpoint folder (or hub id, or a vllm.LLM), each prompt
    seeded `seed + index`; greedy (temperature 0) decodes once and copies."""
    from premem.sampling import truncate_at_stop

    vllm, _, _ = _vllm()
    if isinstance(checkpoint, (str, Path)) and Path(checkpoint).is_dir():
        llm, lora = _for_checkpoint(checkpoint, base, dtype)
    elif isinstance(checkpoint, (str, Path)):
        llm, lora = engine(str(checkpoint), **({"dtype": dtype} if dtype else {})), None  # a hub id
    else:
        llm, lora = checkpoint, None  # an engine of the caller's
    greedy = temperature == 0
    n = 1 if greedy else k
    params = [vllm.SamplingParams(
        n=n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
        max_tokens=max_new_tokens, stop=[stop] if stop else None, include_stop_str_in_output=False,
        seed=seed + i) for i in range(len(prompts))]
    results = llm.generate(list(prompts), params, lora_request=lora, use_tqdm=progress)
    # One RequestOutput per prompt, in input order; truncating again is a no-op unless the stop
    # string was split oddly by the incremental detokeniser.
    out = [[truncate_at_stop(c.text, stop) for c in res.outputs] for res in results]
    return out if n == k else [o * k for o in out]


def target_nll(checkpoint, tokenizer, prompts, targets, *, add_eos: bool = True, base: str | None = None,
               dtype: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL of each target given its prompt, and its token count, as perplexity.target_nll
    computes them (at the engine's dtype), from vLLM's prompt logprobs."""
    from premem.perplexity import encode_pairs

    vllm, TokensPrompt, _ = _vllm()
    llm, lora = _for_checkpoint(checkpoint, base, dtype)
    enc = encode_pairs(tokenizer, prompts, targets, add_eos=add_eos)
    # prompt_logprobs=0: the logprob of each prompt token itself; one generated token is the least vLLM makes.
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in enc], params, lora_request=lora,
                           use_tqdm=False)
    nll, n_tokens = np.zeros(len(enc)), np.zeros(len(enc), dtype=int)
    for i, ((ids, n_prompt), res) in enumerate(zip(enc, results)):
        logprobs = res.prompt_logprobs  # position t: {token id: Logprob} for ids[t]; None at t = 0
        if logprobs is None or len(logprobs) != len(ids):
            raise PremError(f"vllm returned {0 if logprobs is None else len(logprobs)} prompt logprobs for "
                            f"{len(ids)} tokens (example {i})")
        nll[i] = -sum(logprobs[t][ids[t]].logprob for t in range(n_prompt, len(ids)))
        n_tokens[i] = len(ids) - n_prompt
    return nll, n_tokens
