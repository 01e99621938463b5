"""Prompt and target as token ids, one way for training, perplexity and sampling.

Training's completion-only features, the gold-solution perplexity and the vLLM engine's prompt
logprobs all encode an example with `encode_example` (prompt and target tokenised apart; the label
mask starts at the measured prompt length), and cut it at `model_max_length` as training does;
a sampled completion ends at the stop string (`truncate_at_stop`) in every backend.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from premem.errors import PremError


def encode_example(tokenizer, prompt: str, target: str, add_eos: bool = True) -> tuple[list[int], int]:
    """Token ids of prompt + target (+ eos), and the number of prompt tokens (the masked prefix).

    Prompt and target are tokenised separately and their ids concatenated. For the char tokenizer
    this equals tokenising prompt + target; for BPE tokenizers a token may otherwise merge across
    the boundary, leaving no clean place to start the loss. Separate tokenisation is also what
    sampling sees (the prompt is tokenised alone and the model continues it), so training, sampling
    and gold-solution perplexity (which calls this too) agree on the same ids. The prompt keeps the
    tokenizer's own special tokens (BOS, if any): the mask length is measured, never assumed to be
    one BOS. Training always appends eos, so the model learns to stop.
    """
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise PremError(f"tokenizer {tokenizer.name_or_path} has no eos token to end targets with")
    # Some tokenizers append eos to every encoding; a prompt must not end the sequence.
    if prompt_ids and eos is not None and prompt_ids[-1] == eos and eos != tokenizer.bos_token_id:
        prompt_ids = prompt_ids[:-1]
    if not prompt_ids:
        # Nothing to condition the first target token on; the model has no "empty" state.
        raise PremError(f"prompt tokenises to no tokens (and the tokenizer adds no BOS): {prompt!r}")
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"]) + ([eos] if add_eos else [])
    if not target_ids:
        raise PremError(f"target tokenises to no tokens and add_eos is off: {target!r}")
    return prompt_ids + target_ids, len(prompt_ids)


def build_features(tokenizer, prompts, targets, max_length: int | None = None, add_eos: bool = True,
                   truncate: bool = False) -> list[dict]:
    """One {"input_ids", "labels"} dict per example; labels are -100 on the prompt. An example over
    `max_length` tokens is an error, or cut to it with `truncate` (as the authors' tokenizer calls do)."""
    if len(prompts) != len(targets):
        raise PremError(f"prompts ({len(prompts)}) and targets ({len(targets)}) differ in length")
    if not prompts:
        raise PremError("no training examples: prompts is empty")
    features = []
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        ids, n_prompt = encode_example(tokenizer, prompt, target, add_eos=add_eos)
        if max_length is not None and len(ids) > max_length and not truncate:
            raise PremError(f"example {i} has {len(ids)} tokens, more than the model's {max_length}")
        labels = ([-100] * n_prompt + ids[n_prompt:])[:max_length]
        features.append({"input_ids": ids[:max_length], "labels": labels})
    return features


class CompletionCollator:
    """Right-pad a list of features into tensors; padded positions get label -100 and mask 0."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad, dtype=torch.long)
        labels = torch.full((len(features), n), -100, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for row, f in enumerate(features):
            k = len(f["input_ids"])
            ids[row, :k] = torch.tensor(f["input_ids"])
            labels[row, :k] = torch.tensor(f["labels"])
            mask[row, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def encode_pairs(tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
                 add_eos: bool = True, max_length: int | None = None) -> list[tuple[list[int], int]]:
    """Token ids of ``prompt ++ target`` and the prompt's length in tokens, per example, encoded
    exactly as training encodes them (encode_example), and cut to `max_length`
    as training cuts them (model_max_length): the tokens training never saw are not scored."""
    if len(prompts) != len(targets):
        raise PremError(f"prompts and targets differ in length: {len(prompts)} != {len(targets)}")
    out = [encode_example(tokenizer, p, t, add_eos=add_eos) for p, t in zip(prompts, targets)]
    if max_length is None:
        return out
    for i, (ids, n_prompt) in enumerate(out):
        if n_prompt >= max_length:
            raise PremError(f"example {i}: its prompt alone is {n_prompt} tokens, and model_max_length {max_length} "
                            "cuts training examples there: training saw none of its target")
    return [(ids[:max_length], n_prompt) for ids, n_prompt in out]


def truncate_at_stop(text: str, stop: str | None) -> str:
    """``text`` up to (not including) the first occurrence of ``stop``."""
    if not stop:
        return text
    cut = text.find(stop)
    return text if cut < 0 else text[:cut]
