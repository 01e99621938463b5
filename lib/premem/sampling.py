"""k sampled completions per prompt, the raw material of Kang et al.'s per-checkpoint accuracy.

At every checkpoint the paper samples k completions per training query at temperature 0.8 and
grades them. ``sample`` returns them as ``list[list[str]]`` (prompts x k), each cut before the stop
string (``"\\nDone."`` by the project's prompt format) and without it.

premem's own decoding loop over a transformers causal LM: batched, with the KV cache, left padding
and an attention mask, stopping on the stop string or EOS (see ``_decode``). Pure temperature
sampling with optional top-p, as vLLM's ``SamplingParams``: no top_k or repetition penalty from the
checkpoint's generation_config sneaks in. Reproducible: each batch has its own generator seeded
from ``(seed, batch index)`` (the caller's global RNG is untouched), so a batch's samples do not
depend on earlier batches. Results do depend on ``batch_size`` and on the set of prompts (they
decide the batches). vLLM's sampler is premem.vllm_backend; premem.backends names both.

``temperature=0`` means greedy decoding (k identical completions).
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import StaticCache

from premem import llama_decode
from premem.encoding import truncate_at_stop
from premem.errors import PremError

__all__ = ["sample", "truncate_at_stop"]

def sample(model, tokenizer, prompts: Sequence[str], *, k: int, temperature: float = 0.8,
           top_p: float = 1.0, max_new_tokens: int = 256, stop: str | None = "\nDone.",
           seed: int = 0, batch_size: int = 64, progress: bool = True) -> list[list[str]]:
    """k completions for each prompt, in prompt order, each truncated before ``stop``.

    ``model`` is a loaded ``PreTrainedModel`` or a checkpoint path (loaded with
    ``AutoModelForCausalLM``). ``batch_size`` counts generated sequences per decoding batch (prompts
    per batch = batch_size // k, at least one).
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


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already enough
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _cache_keyword(model) -> str:
    """transformers 5 names the KV cache argument `cache`; earlier releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


STOP_CHECK_EVERY = 8  # decode-and-search for the stop string every this many tokens


@contextlib.contextmanager
def _matmul_attention_on_cpu(model, device):
    """Eager (matmul) attention while decoding on a CPU: for one query token over a few hundred keys
    it is ~1.8x faster than torch's SDPA kernel (torch 2.13, the embedded model's shapes), and
    sampling ~13% faster with the same samples (a 1024-sample check). The model's own attention is
    restored afterwards; GPUs keep theirs."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if device.type != "cpu" or current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


class _StaticCacheDecoder:
    """Decoding steps through the model's own forward with a preallocated cache (any causal LM);
    the interface `_decode` drives: first_logits, step(token), removable(finished), keep(rows).

    A preallocated cache, because a growing one re-copies every key and value at every step. Each
    prompt is read once, then its cache is copied for its `copies` samples."""

    def __init__(self, model, ids, mask, *, copies, max_new_tokens, cache_keyword):
        rows, self.width = ids.shape
        n = rows * copies
        self.model, self.cache_kw, self.t = model, cache_keyword, 0
        position = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
        self.cache = StaticCache(config=model.config, max_cache_len=self.width + max_new_tokens)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position, **{cache_keyword: self.cache},
                       cache_position=torch.arange(self.width, device=ids.device), use_cache=True).logits[:, -1, :]
        if copies > 1:
            for layer in self.cache.layers:
                layer.keys = layer.keys.repeat_interleave(copies, dim=0)
                layer.values = layer.values.repeat_interleave(copies, dim=0)
                layer.batch_size = n
            logits, mask = logits.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
            position = position.repeat_interleave(copies, dim=0)
        self.first_logits = logits
        self.full_mask = torch.cat([mask, mask.new_zeros((n, max_new_tokens))], dim=-1)
        self.position = position[:, -1:]

    def removable(self, finished):
        return finished

    def keep(self, rows):
        self.full_mask, self.position = self.full_mask[rows], self.position[rows]
        for layer in self.cache.layers:
            layer.keys, layer.values, layer.batch_size = layer.keys[rows], layer.values[rows], len(rows)

    def step(self, token):
        w = self.width + self.t
        self.full_mask[:, w] = 1
        self.position = self.position + 1
        self.t += 1
        return self.model(input_ids=token[:, None], attention_mask=self.full_mask[:, :w + 1], position_ids=self.position,
                          cache_position=torch.tensor([w], device=token.device), **{self.cache_kw: self.cache},
                          use_cache=True).logits[:, -1, :]


@torch.inference_mode()
def _decode(model, ids, mask, *, copies, max_new_tokens, temperature, top_p, eos, pad, stop, tokenizer,
            generator) -> torch.Tensor:
    """Plain temperature (or greedy) decoding with the KV cache of `copies` samples per prompt row;
    returns the new tokens, (rows * copies) x T, a prompt's samples consecutive.

    A lean loop instead of `generate`: for ~1M-parameter models generate's per-step machinery
    (logits processors, stop-string criteria) costs more than the forward pass. The steps are
    `llama_decode.LlamaDecoder`'s for a plain Llama on a CPU (prompt keys stored once per prompt;
    1.1-1.2x faster, same samples), the model's own forward otherwise.
    Finished rows are dropped from the batch and its cache, so long samples do not keep short ones
    computing. The stop string is searched in the decoded text every STOP_CHECK_EVERY tokens;
    tokens past it are cut by `truncate_at_stop` afterwards, so checking late changes nothing but
    time. Finished rows keep their slot until a quarter of the batch can be dropped, then the batch
    and cache are compacted.
    """
    decoder = (llama_decode.LlamaDecoder if llama_decode.supports(model) else _StaticCacheDecoder)(
        model, ids, mask, copies=copies, max_new_tokens=max_new_tokens, cache_keyword=_cache_keyword(model))
    n = ids.shape[0] * copies
    out = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=ids.device)
    alive = torch.arange(n, device=ids.device)  # original row of each row still decoding
    logits = decoder.first_logits
    eos_t = torch.tensor(eos or [-1], device=ids.device)
    finished = torch.zeros(n, dtype=torch.bool, device=ids.device)
    for t in range(max_new_tokens):
        # One uniform draw per original row at every step, used by inverse-CDF sampling: a row's
        # sample never depends on which other rows have finished (or been compacted away), so
        # stopping early only ever cuts a sample, and never changes its prefix.
        u = torch.rand(n, generator=generator, device=ids.device)[alive]
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(_filter_top_p(logits.float() / temperature, top_p), dim=-1)
            cdf = probs.cumsum(-1)
            token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1).clamp(max=probs.shape[-1] - 1)
        out[alive[~finished], t] = token[~finished]
        finished |= torch.isin(token, eos_t)
        if stop and (t + 1) % STOP_CHECK_EVERY == 0:
            texts = tokenizer.batch_decode(out[alive, :t + 1], skip_special_tokens=True)
            finished |= torch.tensor([stop in x for x in texts], device=ids.device)
        if finished.all() or t + 1 == max_new_tokens:
            break
        drop = decoder.removable(finished)
        if drop.sum() * 4 >= len(drop):  # compact when a quarter of the rows can go
            keep = (~drop).nonzero().squeeze(-1)
            alive, token, finished = alive[keep], token[keep], finished[keep]
            decoder.keep(keep)
        logits = decoder.step(token)
    return out


def _batch_seed(seed: int, batch: int) -> int:
    # Independent, well-mixed streams per (seed, batch); plain seed + batch would make neighbouring
    # seeds share most of their batches' streams.
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _sample_hf(model, tokenizer, prompts, *, k, temperature, top_p, max_new_tokens, stop, seed,
               batch_size, progress) -> list[list[str]]:
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    n = 1 if temperature == 0 else k  # greedy: one decode, k copies
    enc = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    # Sorted by length so a batch has little padding; results are put back in prompt order.
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    per_call = max(1, batch_size // n)
    batches = [order[s:s + per_call] for s in range(0, len(order), per_call)]
    out: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        # The lean Llama decoder has its own attention; prefill then keeps the model's (SDPA), faster on prompts.
        lean = llama_decode.supports(model)
        with contextlib.nullcontext() if lean else _matmul_attention_on_cpu(model, device):
            for b, idx in enumerate(tqdm(batches, desc="sampling", disable=not progress)):
                width = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                    ids[r, width - len(enc[i]):] = torch.tensor(enc[i])
                    mask[r, width - len(enc[i]):] = 1
                # Each batch has its own generator from (seed, batch index): a batch's samples do not
                # depend on earlier batches, and the caller's global RNG is untouched.
                generator = torch.Generator(device=device).manual_seed(_batch_seed(seed, b))
                new = _decode(model, ids.to(device), mask.to(device), copies=n, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, eos=eos, pad=pad, stop=stop,
                              tokenizer=tokenizer, generator=generator)
                texts = tokenizer.batch_decode(_cut_at_eos(new, eos, pad), skip_special_tokens=True)
                for r, i in enumerate(idx):
                    done = [truncate_at_stop(t, stop) for t in texts[r * n:(r + 1) * n]]
                    out[i] = done if n == k else done * k
    finally:
        model.train(was_training)
    return out


def _cut_at_eos(new: torch.Tensor, eos: list[int], pad: int) -> torch.Tensor:
    """Tokens after a row's first EOS become padding (rows drop out of decoding a step late)."""
    if not eos:
        return new
    hit = torch.isin(new, torch.tensor(eos, device=new.device)).int().cumsum(-1) > 0
    return new.masked_fill(hit, pad)
