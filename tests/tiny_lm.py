"""Tiny local language models for tests and the benchmark: no hub downloads.

A character-level tokenizer (one token per character, so no merges across a prompt/target boundary)
wrapped in PreTrainedTokenizerFast, and a random LlamaForCausalLM sized by the caller. `bos=True`
gives a tokenizer that prepends <s> to every encoded text, like Llama's, to test label masks.
"""
from __future__ import annotations

import contextlib
import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = string.ascii_letters + string.digits + " \n.,:;!?+-*/=#()'\"$%"


def char_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # One token per character, newlines included; Fuse joins them back without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        clean_up_tokenization_spaces=False)


def tiny_llama(vocab_size: int, *, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
               seed: int = 0, max_len: int = 512) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
        max_position_embeddings=max_len, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    # Random init at std 0.02 gives near-uniform next-token distributions; larger output weights
    # make samples peaked enough that different seeds still differ but greedy has no near-ties.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    return model.eval()


@contextlib.contextmanager
def single_thread():
    """One torch thread for tiny models: with 2 threads on a shared 2-core machine, OpenMP barriers
    around microsecond-sized ops spin for whole scheduler slices when another process holds a core
    (seen here: 74 s instead of 6 s for the sampling tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
