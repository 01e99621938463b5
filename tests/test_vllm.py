"""premem's vLLM wiring against a stand-in `vllm` (tests/standins/vllm): vLLM itself cannot be
installed here. What is checked: the calls premem makes (one engine per checkpoint, reused across
train prompts, test prompts and perplexity; prefix caching off; SamplingParams; LoRARequest on the
base's engine) and that perplexity from prompt logprobs of token-id prompts equals premem's
transformers path, so the label boundary is training's."""
import sys
from pathlib import Path

import numpy as np
import pytest

from premem import model as pm
from premem import perplexity, training, vllm_backend
from premem.config import load_params

STANDINS = Path(__file__).resolve().parent / "standins"
PROMPTS = ["1 + 2 =\nAnswer:", "3 + 4 =\nAnswer:", "10 + 20 =\nAnswer:"]
TARGETS = [" 3\nDone.", " 7\nDone.", " 30\nDone."]


@pytest.fixture
def vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    vllm.ENGINES.clear()
    vllm_backend.release()
    vllm.TEARDOWNS.clear()
    yield vllm
    vllm_backend.release()
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]  # later tests must not find the stand-in


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A full model and a LoRA adapter on it, saved as a trainer would."""
    root = tmp_path_factory.mktemp("vllm")
    tok = pm.char_tokenizer()
    lm = pm._tiny_llama(len(tok), tok, 32, 2, 2, 64, seed=0)
    lm.save_pretrained(root / "full")
    tok.save_pretrained(root / "full")
    adapted = training.apply_lora(pm._tiny_llama(len(tok), tok, 32, 2, 2, 64, seed=0),
                                  dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), seed=1)
    for p in adapted.parameters():  # a trained adapter is not zero: B starts at 0, so move it
        if p.requires_grad:
            p.data.add_(0.05)
    adapted.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    (root / "adapter" / "adapter_config.json").write_text(
        (root / "adapter" / "adapter_config.json").read_text().replace('"base_model_name_or_path": null',
                                                                       f'"base_model_name_or_path": "{root / "full"}"'))
    return root, tok, lm, adapted


@pytest.mark.parametrize("add_eos", [True, False])
def test_prompt_logprob_perplexity_equals_the_transformers_path(vllm, checkpoints, add_eos):
    root, tok, lm, _ = checkpoints
    nll, n = vllm_backend.target_nll(root / "full", tok, PROMPTS, TARGETS, add_eos=add_eos)
    want, want_n = perplexity.target_nll(lm, tok, PROMPTS, TARGETS, add_eos=add_eos, progress=False)
    np.testing.assert_array_equal(n, want_n)
    np.testing.assert_allclose(nll, want, rtol=1e-5)
    (engine,) = vllm.ENGINES
    assert engine.enable_prefix_caching is False
    (call,) = engine.calls
    # Token-id prompts: prompt + target ids exactly as training encodes them.
    assert [p["prompt_token_ids"] for p in call["prompts"]] == [ids for ids, _ in
                                                               perplexity.encode_pairs(tok, PROMPTS, TARGETS, add_eos=add_eos)]
    assert call["params"].prompt_logprobs == 0 and call["params"].max_tokens == 1


def test_one_engine_per_checkpoint_reused_across_measurements(vllm, checkpoints):
    root, tok, _, _ = checkpoints
    first = vllm_backend.sample(str(root / "full"), PROMPTS, k=4, temperature=0.8, top_p=0.95, max_new_tokens=32,
                                stop="\nDone.", seed=7)
    vllm_backend.sample(str(root / "full"), PROMPTS[:1], k=4, temperature=0.8, top_p=0.95, max_new_tokens=32,
                        stop="\nDone.", seed=8)
    vllm_backend.target_nll(root / "full", tok, PROMPTS, TARGETS)
    assert len(vllm.ENGINES) == 1 and len(vllm.ENGINES[0].calls) == 3
    assert [len(o) for o in first] == [4, 4, 4]
    params = vllm.ENGINES[0].calls[0]["params"]
    assert [(p.n, p.temperature, p.top_p, p.max_tokens, p.stop, p.seed) for p in params] == [
        (4, 0.8, 0.95, 32, ["\nDone."], 7 + i) for i in range(3)]
    greedy = vllm_backend.sample(str(root / "full"), PROMPTS, k=3, temperature=0, top_p=0.95, max_new_tokens=8,
                                 stop=None, seed=0)
    assert all(len(set(o)) == 1 and len(o) == 3 for o in greedy)  # decoded once, copied
    assert vllm.ENGINES[0].calls[-1]["params"][0].n == 1
    # Other weights: a new engine, the old one released.
    other = root / "full2"
    if not other.exists():
        other.symlink_to(root / "full", target_is_directory=True)
    assert vllm.TEARDOWNS == []
    vllm_backend.sample(str(other), PROMPTS, k=2, temperature=0.8, top_p=1.0, max_new_tokens=8, stop=None, seed=0)
    assert len(vllm.ENGINES) == 2 and vllm_backend._ENGINE["llm"] is vllm.ENGINES[1]
    assert vllm.TEARDOWNS == ["model_parallel", "distributed_environment"]  # as vLLM's tests tear down


def test_adapters_are_lora_requests_on_the_base_engine(vllm, checkpoints):
    root, tok, _, adapted = checkpoints
    nll, _ = vllm_backend.target_nll(root / "adapter", tok, PROMPTS, TARGETS)
    want, _ = perplexity.target_nll(adapted, tok, PROMPTS, TARGETS, progress=False)
    np.testing.assert_allclose(nll, want, rtol=1e-5)
    vllm_backend.sample(str(root / "adapter"), PROMPTS, k=2, temperature=0.8, top_p=1.0, max_new_tokens=8,
                        stop=None, seed=0)
    (engine,) = vllm.ENGINES
    assert engine.model == str(root / "full") and engine.enable_lora and engine.max_lora_rank == 8
    requests = {c["lora"].lora_path for c in engine.calls}
    assert requests == {str(root / "adapter")}


def test_the_recorder_measures_both_with_vllm(vllm, checkpoints, tmp_path):
    """A checkpoint recorded with backend vllm: samples from the engine, perplexities equal to the
    transformers backend's record of the same checkpoint."""
    import pandas as pd

    from premem import record, recorder, tasks

    root, tok, lm, _ = checkpoints
    examples = [tasks.Example(f"e{i}", p.split(" =")[0], t.strip().split("\n")[0] + " #### " + t.split()[0], t.split()[0])
                for i, (p, t) in enumerate(zip(PROMPTS, TARGETS))]
    cfg = load_params(dict(task="jsonl", task_options=dict(checker="marker"), k=2, k_test=2, tau_rule="fixed",
                           max_new_tokens=8, prompt_template="{question} =\nAnswer:", target_template=" {solution}\nDone."))
    tables = {}
    for backend in ("vllm", "transformers"):
        folder = tmp_path / backend
        folder.mkdir()
        rec = recorder.Recorder(cfg.model_copy(update=dict(backend=backend)), examples, examples[:1], baselines=False)
        rec.record(folder, "r", 0, 1, 1.0, lm, tok, checkpoint=root / "full")
        tables[backend] = {t: pd.read_parquet(f) for t in ("samples", "perplexity")
                           for f in [record.part_path(folder, t, 1)]}
    np.testing.assert_allclose(tables["vllm"]["perplexity"].nll, tables["transformers"]["perplexity"].nll, rtol=1e-5)
    assert len(vllm.ENGINES) == 1 and len(vllm.ENGINES[0].calls) == 3  # train, test, perplexity
    assert len(tables["vllm"]["samples"]) == 2 * 3 + 2 * 1
    # With the baselines the engine goes first: their backward passes need the GPU it held.
    folder = tmp_path / "baselines"
    folder.mkdir()
    recorder.Recorder(cfg.model_copy(update=dict(backend="vllm")), examples, baselines=True).record(
        folder, "r", 0, 1, 1.0, lm, tok, checkpoint=root / "full", init_state=training.snapshot(lm))
    assert vllm_backend._ENGINE["llm"] is None and vllm.TEARDOWNS
    stats = pd.read_parquet(record.part_path(folder, "checkpoints", 1))
    assert np.isfinite(stats.grad_variance).all() and (stats.param_distance == 0).all()
