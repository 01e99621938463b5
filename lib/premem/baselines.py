"""The baseline predictors the paper compares pre-memorization accuracy against (claim 2), measured
on a checkpoint's weights: `param_distance` (||theta - theta0||^2 from the weights training started
at, kept by `snapshot`) and `gradient_variance` (variance of minibatch gradients of the training
loss). The recorder measures them beside the samples and perplexities (premem.recorder).
"""
from __future__ import annotations

import torch

from premem.encoding import CompletionCollator, build_features
from premem.errors import PremError


def snapshot(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable parameters, the theta0 for param_distance."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def param_distance(model, init_state: dict[str, torch.Tensor]) -> float:
    """||theta - theta0||^2 over the parameters named in init_state (see `snapshot`)."""
    params = dict(model.named_parameters())
    missing = [n for n in init_state if n not in params]
    if missing or not init_state:
        raise PremError(f"param_distance: init_state names parameters the model lacks, e.g. "
                        f"{missing[:1] or '(empty)'}; take the snapshot from the same (wrapped) model")
    total = 0.0
    for name, p0 in init_state.items():
        total += (params[name].detach().float().cpu() - p0.float()).pow(2).sum().item()
    return total


def gradient_variance(model, tokenizer, prompts, targets, batch_size: int, n_batches: int,
                      seed: int = 0, add_eos: bool = True, max_length: int | None = None) -> float:
    """Mean over trainable parameter entries of the variance of their minibatch gradients.

    n_batches minibatches of batch_size examples are drawn at random (seeded; each without
    replacement), the completion-only loss gradient taken for each with dropout off, and the
    per-entry sample variance (ddof=1) averaged over all entries. Holds two float32 copies of the
    trainable parameters. Leaves no gradients behind and restores the train/eval mode.
    """
    if n_batches < 2:
        raise PremError(f"gradient_variance needs n_batches >= 2, got {n_batches}")
    # Training's encoding (eos or not, cut at model_max_length), so the loss is the one trained.
    features = build_features(tokenizer, prompts, targets, max_length=max_length, add_eos=add_eos,
                              truncate=max_length is not None)
    # Padding is masked out of the loss, so any id serves; a trainer's tokenizer may have no pad token.
    collate = CompletionCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                 else tokenizer.eos_token_id or 0)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    mean = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    m2 = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for b in range(n_batches):
            idx = torch.randperm(len(features), generator=gen)[:batch_size].tolist()
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx]).items()}
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                model(**batch).loss.backward()
            for p, mu, s in zip(params, mean, m2):  # Welford: one pass, no stack of gradients
                g = p.grad.detach().float() if p.grad is not None else torch.zeros_like(mu)
                delta = g - mu
                mu += delta / (b + 1)
                s += delta * (g - mu)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    total = sum(s.sum().item() for s in m2) / (n_batches - 1)
    return total / sum(s.numel() for s in m2)
