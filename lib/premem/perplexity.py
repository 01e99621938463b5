"""Teacher-forced per-token perplexity of gold targets given their prompts.

Kang et al. (2024) record, at every checkpoint, the perplexity of each gold solution given its
question: ``exp(mean NLL over the target tokens)``. This module computes the summed NLL and the
token count per example, batched, so callers can form perplexities or pool tokens as they like.

Tokenisation. The prompt and the target are tokenised *separately* and their ids concatenated:

- A tokenizer may merge characters across the prompt/target boundary (BPE on ``"Answer:" + " 42"``),
  so the tokens of ``prompt + target`` need not start with the tokens of the prompt. Tokenising
  apart makes the target tokens well defined and the same at every checkpoint.
- The label mask starts at ``len(tokenised prompt)``, special tokens included. The authors'
  ``logits[:, input_length:-1]`` silently assumes exactly one BOS token; here a tokenizer that
  prepends BOS (or nothing) is handled by construction, and tests check both.
- The prompt gets the tokenizer's special tokens (BOS where it adds one), the target none, and
  ``add_eos=True`` appends EOS to the target, as training does (the model is trained to end with
  EOS, so its probability is part of the gold sequence's likelihood). Pass ``add_eos=False`` to
  score the bare target text.

Batching: examples are sorted by length, right-padded with an attention mask (right padding keeps
position ids equal to the unpadded ones, so padding cannot change the result), and run in eval mode
under ``torch.inference_mode``. Where the model's forward takes ``logits_to_keep`` (transformers
causal LMs do), logits before the batch's shortest prompt are not computed. ``one_at_a_time_nll`` runs the authors' per-example loop, one
forward per example, with the same tokenisation; it exists only for the benchmark and tests.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from premem.encoding import encode_pairs  # noqa: F401 (part of this module's API, __all__)
from premem.errors import PremError

__all__ = ["encode_pairs", "target_nll", "one_at_a_time_nll", "perplexity"]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _row_nll(logits: torch.Tensor, ids: torch.Tensor, start: int, end: int, offset: int = 0) -> float:
    """NLL summed over target positions start..end-1 of one row; logits at t predict ids at t+1.

    ``logits[j]`` belongs to position ``offset + j`` (the first ``offset`` were never computed).
    """
    # Only the target slice is upcast to float32, so the batch's logits are never copied whole.
    logp = torch.log_softmax(logits[start - 1 - offset:end - 1 - offset].float(), dim=-1)
    tok_logp = logp.gather(-1, ids[start:end, None]).squeeze(-1)
    return float(-tok_logp.double().sum())


class _EvalMode:
    """Eval mode for the duration, restoring training mode after (callers may be mid-training)."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def target_nll(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
               batch_size: int = 32, add_eos: bool = True, max_length: int | None = None,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL (nats, float64) of each target given its prompt, and its number of target tokens.

    Returns ``(nll_sum, n_tokens)`` of shape ``(n,)``; per-token perplexity is
    ``perplexity(nll_sum, n_tokens) = exp(nll_sum / n_tokens)``. See the module docstring for how
    prompt and target are tokenised and masked; `max_length` scores only the target tokens
    within the first max_length, as training (model_max_length) saw them.
    """
    if batch_size < 1:
        raise PremError(f"batch_size must be >= 1, got {batch_size}")
    enc = encode_pairs(tokenizer, prompts, targets, add_eos=add_eos, max_length=max_length)
    n = len(enc)
    nll = np.zeros(n, dtype=np.float64)
    n_tok = np.array([len(ids) - p_len for ids, p_len in enc], dtype=np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = _device(model)
    # Longest first: similar lengths share a batch (little padding), and an out-of-memory error
    # shows up on the first batch rather than at the end.
    order = sorted(range(n), key=lambda i: -len(enc[i][0]))
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    keep_ok = _accepts_logits_to_keep(model)
    with _EvalMode(model), torch.inference_mode():
        for idx in tqdm(batches, desc="perplexity", disable=not progress):
            width = max(len(enc[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                seq = enc[i][0]
                ids[r, :len(seq)] = torch.tensor(seq)
                mask[r, :len(seq)] = 1
            ids, mask = ids.to(device), mask.to(device)
            # Logits are needed only from the shortest prompt's last token on; skipping the prompt
            # positions saves LM-head work and memory (large with 100k+ vocabularies).
            kw = {"logits_to_keep": width - min(enc[i][1] for i in idx) + 1} if keep_ok else {}
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kw).logits
            offset = width - logits.shape[1]
            for r, i in enumerate(idx):
                seq, p_len = enc[i]
                nll[i] = _row_nll(logits[r], ids[r], p_len, len(seq), offset)
    return nll, n_tok


def one_at_a_time_nll(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
                      add_eos: bool = True, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The authors' loop: one unpadded forward per example. Same outputs as ``target_nll``.

    Kept only as the baseline for ``scripts/benchmark.py`` and as an independent check in tests;
    use ``target_nll``.
    """
    enc = encode_pairs(tokenizer, prompts, targets, add_eos=add_eos)
    nll = np.zeros(len(enc), dtype=np.float64)
    n_tok = np.array([len(ids) - p_len for ids, p_len in enc], dtype=np.int64)
    device = _device(model)
    with _EvalMode(model), torch.inference_mode():
        for i, (seq, p_len) in enumerate(tqdm(enc, desc="perplexity (1 by 1)", disable=not progress)):
            ids = torch.tensor([seq], device=device)
            logits = model(input_ids=ids, use_cache=False).logits
            nll[i] = _row_nll(logits[0], ids[0], p_len, len(seq))
    return nll, n_tok


def perplexity(nll_sum: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """Per-token perplexity ``exp(nll_sum / n_tokens)``."""
    return np.exp(np.asarray(nll_sum, dtype=np.float64) / np.asarray(n_tokens, dtype=np.float64))
