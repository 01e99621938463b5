"""target_nll against a hand computation, with and without a BOS-prepending tokenizer."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import char_tokenizer, single_thread, tiny_llama  # noqa: E402

from premem.errors import PremError
from premem.perplexity import encode_pairs, one_at_a_time_nll, perplexity, target_nll

# Different prompt and target lengths, so batches need padding on both parts.
PROMPTS = ["What is 2+2?\nAnswer:", "Hi\nAnswer:", "A much longer question, with commas?\nAnswer:",
           "x\nAnswer:", "Q: 17*3\nAnswer:"]
TARGETS = [" 4\nDone.", " It is a greeting, said twice.\nDone.", " 7\nDone.", " yes\nDone.", " 51\nDone."]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def model():
    # float64 so batched and unbatched forwards agree to ~1e-12, leaving 1e-5 to real bugs.
    return tiny_llama(len(char_tokenizer()), seed=1).double()


def hand_nll(model, tok, prompt, target, add_eos=True):
    """Char ids built by hand (not via encode_pairs), one forward, a loop over target positions."""
    p = ([tok.bos_token_id] if tok("a")["input_ids"][0] == tok.bos_token_id else [])
    p += tok.convert_tokens_to_ids(list(prompt))
    t = tok.convert_tokens_to_ids(list(target)) + ([tok.eos_token_id] if add_eos else [])
    ids = torch.tensor([p + t])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    total = 0.0
    for pos in range(len(p), len(p) + len(t)):
        total -= torch.log_softmax(logits[pos - 1], dim=-1)[ids[0, pos]].item()
    return total, len(t)


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_matches_hand_computation(model, bos, batch_size):
    tok = char_tokenizer(bos=bos)
    nll, n = target_nll(model, tok, PROMPTS, TARGETS, batch_size=batch_size, progress=False)
    want = [hand_nll(model, tok, p, t) for p, t in zip(PROMPTS, TARGETS)]
    assert nll.dtype == np.float64 and nll.shape == (len(PROMPTS),)
    np.testing.assert_allclose(nll, [w[0] for w in want], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(n, [w[1] for w in want])
    np.testing.assert_array_equal(n, [len(t) + 1 for t in TARGETS])  # + EOS; BOS is not a target


def test_bos_is_in_the_prompt_not_the_target(model):
    plain, bos = char_tokenizer(), char_tokenizer(bos=True)
    ids, p_len = encode_pairs(bos, ["ab"], ["cd"])[0]
    assert ids == [bos.bos_token_id, *bos.convert_tokens_to_ids(list("abcd")), bos.eos_token_id]
    assert p_len == 3
    assert encode_pairs(plain, ["ab"], ["cd"])[0][1] == 2
    # The extra BOS shifts the context, so it must change the numbers (the mask really moved).
    a, _ = target_nll(model, plain, PROMPTS, TARGETS, progress=False)
    b, _ = target_nll(model, bos, PROMPTS, TARGETS, progress=False)
    assert np.all(np.abs(a - b) > 1e-6)


def test_add_eos_off(model):
    tok = char_tokenizer(bos=True)
    nll, n = target_nll(model, tok, PROMPTS, TARGETS, add_eos=False, progress=False)
    np.testing.assert_array_equal(n, [len(t) for t in TARGETS])
    want = [hand_nll(model, tok, p, t, add_eos=False)[0] for p, t in zip(PROMPTS, TARGETS)]
    np.testing.assert_allclose(nll, want, atol=1e-5)


def test_batched_equals_one_at_a_time(model):
    tok = char_tokenizer(bos=True)
    a, na = target_nll(model, tok, PROMPTS, TARGETS, batch_size=3, progress=False)
    b, nb = one_at_a_time_nll(model, tok, PROMPTS, TARGETS, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(na, nb)


def test_float32_padding_stays_close():
    tok = char_tokenizer()
    m = tiny_llama(len(tok), seed=2)
    a, _ = target_nll(m, tok, PROMPTS, TARGETS, batch_size=32, progress=False)
    b, _ = target_nll(m, tok, PROMPTS, TARGETS, batch_size=1, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_perplexity_and_training_mode_restored(model):
    tok = char_tokenizer()
    model.train()
    nll, n = target_nll(model, tok, PROMPTS[:2], TARGETS[:2], progress=False)
    assert model.training
    model.eval()
    np.testing.assert_allclose(perplexity(nll, n), np.exp(nll / n))
    assert np.all(perplexity(nll, n) > 1)


def test_bad_input(model):
    tok = char_tokenizer()
    with pytest.raises(PremError, match="differ in length"):
        target_nll(model, tok, PROMPTS, TARGETS[:2], progress=False)
    with pytest.raises(PremError, match="prompt tokenises to no tokens"):
        target_nll(model, tok, [""], ["x"], progress=False)
    with pytest.raises(PremError, match="target tokenises to no tokens"):
        target_nll(model, tok, ["x"], [""], add_eos=False, progress=False)
    with pytest.raises(PremError, match="batch_size"):
        target_nll(model, tok, PROMPTS, TARGETS, batch_size=0, progress=False)


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward lacks logits_to_keep: target_nll must fall back to full logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_model_without_logits_to_keep(model):
    tok = char_tokenizer(bos=True)
    a, _ = target_nll(_NoLogitsToKeep(model), tok, PROMPTS, TARGETS, batch_size=4, progress=False)
    b, _ = target_nll(model, tok, PROMPTS, TARGETS, batch_size=4, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-9)
