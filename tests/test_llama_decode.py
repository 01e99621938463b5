"""LlamaDecoder: the same logits as transformers' full forward, step by step and after compaction;
the same samples as the model's own decoding loop; used only where it applies."""
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import char_tokenizer, single_thread, tiny_llama  # noqa: E402

from premem import llama_decode, sampling

PROMPTS = ["What is 2+2?\nAnswer:", "Hi\nAnswer:", "A much longer question, with commas?\nAnswer:"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def gqa_llama(vocab_size):
    # Grouped-query attention (2 query heads per key/value head), untied head, as SmolLM2 has.
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    return model.eval()


def left_padded(tok, prompts):
    enc = [tok(p)["input_ids"] for p in prompts]
    width = max(map(len, enc))
    ids = torch.zeros((len(enc), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(enc):
        ids[r, width - len(e):], mask[r, width - len(e):] = torch.tensor(e), 1
    return ids, mask


def reference_logits(model, ids, mask, prompt_of_row, generated):
    """transformers' full forward over each row's prompt (unpadded) + its generated tokens."""
    out = []
    for p, new in zip(prompt_of_row.tolist(), generated):
        with torch.no_grad():
            out.append(model(input_ids=torch.cat([ids[p][mask[p] == 1], new])[None]).logits[0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("make", [lambda v: tiny_llama(v, seed=0), gqa_llama], ids=["mha", "gqa"])
def test_step_logits_match_the_full_forward_through_compaction(make):
    tok = char_tokenizer(bos=True)
    model = make(len(tok))
    assert llama_decode.supports(model)
    ids, mask = left_padded(tok, PROMPTS)
    copies = 2
    with torch.inference_mode():
        dec = llama_decode.LlamaDecoder(model, ids, mask, copies=copies, max_new_tokens=8,
                                        cache_keyword=sampling._cache_keyword(model))
    prompt_of_row = torch.arange(len(PROMPTS)).repeat_interleave(copies)
    generated = torch.empty((len(prompt_of_row), 0), dtype=torch.long)
    want = reference_logits(model, ids, mask, prompt_of_row, generated)
    torch.testing.assert_close(dec.first_logits, want, atol=1e-4, rtol=1e-4)
    gen = torch.Generator().manual_seed(0)
    for t in range(6):
        token = torch.randint(4, len(tok), (len(prompt_of_row),), generator=gen)
        generated = torch.cat([generated, token[:, None]], 1)
        with torch.inference_mode():
            logits = dec.step(token)
        torch.testing.assert_close(logits, reference_logits(model, ids, mask, prompt_of_row, generated),
                                   atol=1e-4, rtol=1e-4)
        if t == 2:  # drop the middle prompt's group, as `removable` allows once both its copies finish
            finished = torch.tensor([False, False, True, True, True, False])
            drop = dec.removable(finished)
            assert drop.tolist() == [False, False, True, True, False, False]
            keep = (~drop).nonzero().squeeze(-1)
            dec.keep(keep)
            prompt_of_row, generated = prompt_of_row[keep], generated[keep]


def test_sample_gives_the_model_s_own_loop_s_samples(monkeypatch):
    tok = char_tokenizer(bos=True)
    lm = (tiny_llama(len(tok), seed=0), tok)
    kw = dict(k=3, max_new_tokens=30, stop="%-", progress=False, batch_size=6)
    calls = []
    real = llama_decode.LlamaDecoder
    monkeypatch.setattr(llama_decode, "LlamaDecoder", lambda *a, **k: calls.append(1) or real(*a, **k))
    lean = sampling.sample(*lm, PROMPTS * 3, seed=4, **kw)
    greedy = sampling.sample(*lm, PROMPTS, seed=4, temperature=0, **kw)
    assert calls  # the lean decoder ran
    monkeypatch.setattr(llama_decode, "supports", lambda m: False)
    assert sampling.sample(*lm, PROMPTS * 3, seed=4, **kw) == lean
    assert sampling.sample(*lm, PROMPTS, seed=4, temperature=0, **kw) == greedy
    assert len({s for row in lean for s in row}) > len(PROMPTS)  # real samples, not one repeated


def test_supports_plain_llamas_only():
    tok = char_tokenizer()
    assert llama_decode.supports(tiny_llama(len(tok)))
    biased = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=4, attention_bias=True))
    assert not llama_decode.supports(biased)
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_llama(len(tok)), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules="all-linear"))
    assert not llama_decode.supports(wrapped)
