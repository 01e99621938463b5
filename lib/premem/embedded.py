"""The embedded CPU default's base model: built here, with no download at all.

A tokenizer trained on the task's own texts (`bpe_tokenizer`, digits one per token; or a
character-level one over printable ASCII, `char_tokenizer`) and a ~1M-parameter Llama pretrained
from scratch on those texts (`pretrain`), cached under `cache_dir/<content hash>/` by
`build_embedded_base`; `models/` ships the default's. premem.model loads it like any other base.
"""
from __future__ import annotations

import hashlib
import json
import math
import string
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import premem
from premem import io
from premem.errors import PremError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, in this order
# Printable ASCII plus newline; tab and the other odd whitespace map to <unk> (tasks never use them).
CHARS = tuple(c for c in string.printable if c not in "\t\r\x0b\x0c")
EMBEDDED_FORMAT = 1  # bump when the embedded recipe changes, so old caches are not reused


def char_tokenizer():
    """Character-level fast tokenizer: one token per printable ASCII char or newline, BOS prepended.

    Built with `tokenizers` from a fixed vocabulary (no training), so it is identical everywhere and
    every split of a string tokenises to the concatenation of its parts' tokens.
    """

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char alone
    tk.decoder = decoders.Fuse()  # join characters back without spaces
    return _embedded_tokenizer(tk)


def bpe_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on `texts`, every digit its own token, BOS prepended.

    Words and phrases of a procedural task merge into a few tokens while numbers stay digit by
    digit (arithmetic is learnt on digits): arith's texts take ~2.7x fewer tokens than with
    `char_tokenizer` at vocab_size 800, and sequence length is what a tiny model's training and
    sampling cost scale with. Byte-level, so any text (a perturbed prompt, a user's question) has
    tokens; decoding gives back the exact text. Saved with the model it was trained for.
    """

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _embedded_tokenizer(tk)


def _embedded_tokenizer(tk):
    """A `tokenizers.Tokenizer` holding SPECIAL_TOKENS, as the transformers tokenizer the embedded
    base saves: <s> prepended to every encoding, the special tokens named, left padding."""
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


TOKENIZERS = ("char", "bpe")


def build_embedded_base(texts: list[str], *, cache_dir, d_model: int = 128, n_layers: int = 4,
                        n_heads: int = 4, steps: int = 700, lr: float = 3e-3, batch_size: int = 16,
                        seq_len: int = 128, seed: int = 0, tokenizer: str = "char", vocab_size: int = 800,
                        progress: bool = True, search_dirs=()) -> Path:
    """Pretrain a small Llama with a character (or BPE, see `bpe_tokenizer`) tokenizer on `texts`;
    return its saved folder. `seq_len` counts tokens.

    Cached by a content hash of (texts, hyperparameters, premem version): a rerun returns the folder
    at once. `search_dirs` are read-only folders checked first for the same hash (the repository
    ships the default's base model in models/, so a fresh machine need not pretrain). The folder is written to a temporary sibling and renamed, so it is complete or absent.
    Load it with `load_base(path)`. Torch thread counts are left to the caller.
    """

    if not texts:
        raise PremError("build_embedded_base: texts is empty")
    if tokenizer not in TOKENIZERS:
        raise PremError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    hp = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, steps=steps, lr=lr,
              batch_size=batch_size, seq_len=seq_len, seed=seed)
    if tokenizer != "char":  # char bases keep the hash (and shipped folder) they always had
        hp.update(tokenizer=tokenizer, vocab_size=vocab_size)
    key = {"texts": list(texts), "hp": hp, "premem": premem.__version__, "format": EMBEDDED_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    for folder in search_dirs:
        if (Path(folder) / digest / "premem_embedded.json").is_file():
            return Path(folder) / digest
    final = Path(cache_dir) / digest
    if (final / "premem_embedded.json").is_file():
        return final

    tokenizer = char_tokenizer() if tokenizer == "char" else bpe_tokenizer(texts, vocab_size)
    model = _tiny_llama(len(tokenizer), tokenizer, d_model, n_layers, n_heads, seq_len, seed)
    t0 = time.perf_counter()
    losses = pretrain(model, tokenizer, texts, steps=steps, lr=lr, batch_size=batch_size,
                      seq_len=seq_len, seed=seed, progress=progress)
    seconds = time.perf_counter() - t0

    meta = {"hp": hp, "n_texts": len(texts), "premem": premem.__version__, "format": EMBEDDED_FORMAT,
            "n_params": sum(p.numel() for p in model.parameters()), "seconds": round(seconds, 2),
            "steps_per_s": round(steps / max(seconds, 1e-9), 2), "torch_threads": torch.get_num_threads(),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
    try:
        with io.atomic_folder(final) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "premem_embedded.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    except OSError:  # another process finished the same folder first: theirs is identical
        if not (final / "premem_embedded.json").is_file():
            raise
    return final


def _tiny_llama(vocab_size, tokenizer, d_model, n_layers, n_heads, seq_len, seed):
    if d_model % n_heads:
        raise PremError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
        # Longer than the pretraining windows: finetuning sequences (prompt + solution) and sampling
        # can run past seq_len; RoPE positions cost nothing to allow.
        max_position_embeddings=max(4 * seq_len, 1024), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pretrain(model, tokenizer, texts, *, steps, lr, batch_size, seq_len, seed, progress=True) -> list[float]:
    """Plain causal-LM pretraining on the texts packed into one stream "<s>text</s><s>text</s>...".

    Each row of a batch is a window of `seq_len` tokens that starts at a random document's <s>, so
    position 0 always looks like it does at inference time (a prompt tokenised with its BOS).
    AdamW, 5% linear warmup then cosine decay to 10% of `lr`. Returns the loss of every step.
    """

    stream: list[int] = []
    starts: list[int] = []
    for text in texts:
        starts.append(len(stream))
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    # Wrap around so a window that starts near the end still has seq_len tokens.
    stream_t = torch.tensor(stream * (1 + math.ceil(seq_len / len(stream))), dtype=torch.long)
    starts_t = torch.tensor(starts, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    device = next(model.parameters()).device
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="pretrain embedded base", disable=not progress)
    for _ in bar:
        rows = starts_t[torch.randint(len(starts_t), (batch_size,), generator=gen)]
        batch = stream_t[rows[:, None] + offsets].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses
