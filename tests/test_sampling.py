"""sample(): shape, stop strings, seeds, order, greedy agreement with model.generate, errors."""
import contextlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import char_tokenizer, single_thread, tiny_llama  # noqa: E402

from premem import backends
from premem.errors import PremError
from premem.sampling import sample, truncate_at_stop

# Distinct lengths, so sorting by length is a real permutation and ties cannot hide a bug.
PROMPTS = ["What is 2+2?\nAnswer:", "Hi\nAnswer:", "A much longer question, with commas?\nAnswer:",
           "Q: 17*3\nAnswer:", "abc\nAnswer:"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def lm():
    tok = char_tokenizer(bos=True)
    return tiny_llama(len(tok), seed=0), tok


def run(lm, prompts=PROMPTS, **kw):
    kw = {"k": 3, "max_new_tokens": 24, "stop": None, "progress": False, **kw}
    return sample(*lm, prompts, **kw)


def test_shape_and_types(lm):
    out = run(lm, k=3)
    assert len(out) == len(PROMPTS) and all(len(row) == 3 for row in out)
    assert all(isinstance(s, str) for row in out for s in row)
    assert sample(*lm, [], k=2) == []


def test_seed_determinism(lm):
    a, b, c = run(lm, seed=5), run(lm, seed=5), run(lm, seed=6)
    assert a == b
    assert a != c
    assert len({s for row in a for s in row}) > len(PROMPTS)  # k samples per prompt differ


def test_global_rng_untouched(lm):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    run(lm)
    assert torch.equal(torch.rand(3), want)


def test_order_restored_after_length_sort(lm):
    # One batch holds every prompt either way, and distinct lengths fix the sorted order, so the
    # samples must be the same per prompt whatever order the caller passes them in.
    fwd = run(lm, batch_size=64)
    rev = run(lm, prompts=PROMPTS[::-1], batch_size=64)
    assert rev[::-1] == fwd


def test_stop_string_truncates(lm):
    free = run(lm, max_new_tokens=40, seed=1)
    stop = "%-"  # two tokens long, frequent in this model's samples
    assert sum(stop in s for row in free for s in row) >= 3, "test is vacuous: stop never sampled"
    stopped = run(lm, max_new_tokens=40, seed=1, stop=stop)
    # Same seed, same batches: stopping only cuts each sample, it never changes its prefix.
    assert stopped == [[truncate_at_stop(s, stop) for s in row] for row in free]
    assert not any(stop in s for row in stopped for s in row)


def test_stop_ends_generation_early(lm):
    model, tok = lm
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = sample(model, tok, PROMPTS, k=2, max_new_tokens=40, stop="J", seed=0, batch_size=64,
                     progress=False)
    finally:
        hook.remove()
    assert all(len(row) == 2 for row in out)
    assert len(calls) < 40  # every sequence hit the stop early, so generate returned early


def test_greedy_equals_model_generate(lm):
    model, tok = lm
    out = sample(model, tok, PROMPTS, k=2, temperature=0, max_new_tokens=20, stop="%-", batch_size=4,
                 progress=False)
    for prompt, row in zip(PROMPTS, out):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, do_sample=False, max_new_tokens=20, pad_token_id=tok.pad_token_id)
        want = truncate_at_stop(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True), "%-")
        assert row == [want, want]


def test_cpu_decoding_runs_matmul_attention_and_restores_the_model_s_own(lm, monkeypatch):
    from premem import llama_decode, sampling

    model, tok = lm
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(llama_decode, "supports", lambda m: False)  # the model's own forward decodes
    seen, decode = [], sampling._decode
    monkeypatch.setattr(sampling, "_decode", lambda m, *a, **k: seen.append(m.config._attn_implementation)
                        or decode(m, *a, **k))
    out = run(lm, seed=3)
    assert set(seen) == {"eager"} and model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(sampling, "_matmul_attention_on_cpu", lambda *a: contextlib.nullcontext())
    assert run(lm, seed=3) == out and seen[-1] == "sdpa"  # the same samples under torch's SDPA
    monkeypatch.undo()
    assert run(lm, seed=3) == out  # LlamaDecoder: its own attention, the model's kept for prefill


def test_model_generation_config_does_not_leak(lm):
    # top_k=1 in the checkpoint's generation_config would make every sample greedy.
    model, tok = lm
    old = model.generation_config.top_k
    model.generation_config.top_k = 1
    try:
        out = run(lm, k=4)
    finally:
        model.generation_config.top_k = old
    assert any(len(set(row)) > 1 for row in out)


def test_truncate_at_stop():
    assert truncate_at_stop(" 42\nDone. more\nDone.", "\nDone.") == " 42"
    assert truncate_at_stop(" 42", "\nDone.") == " 42"
    assert truncate_at_stop(" 42\nDone.", None) == " 42\nDone."


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k(lm, k):
    with pytest.raises(PremError, match="k must be"):
        sample(*lm, PROMPTS, k=k, progress=False)


def test_bad_arguments(lm):
    with pytest.raises(PremError, match="backend"):
        backends.sample(*lm, PROMPTS, k=1, backend="tgi")
    with pytest.raises(PremError, match="single string"):
        sample(*lm, "a prompt", k=1)
    with pytest.raises(PremError, match="temperature"):
        sample(*lm, PROMPTS, k=1, temperature=-0.1)


def test_vllm_backend_missing_is_clear(lm):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(PremError, match="vllm"):
        backends.sample("some/checkpoint", None, PROMPTS, k=2, backend="vllm")
    # auto falls back to transformers on a machine without vLLM or CUDA
    assert len(backends.sample(*lm, PROMPTS[:1], k=2, max_new_tokens=4, backend="auto", progress=False)[0]) == 2
