"""A backend is one entry in premem.backends.BACKENDS: a new one, registered there and nowhere else,
measures a checkpoint into a record, and what it declares (an engine of its own, what it refuses)
reaches the launch checks."""
from pathlib import Path

import numpy as np
import pytest

from premem import backends, data as data_lib, record, record_schema, recorder, sweep
from premem.config import load_params
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]
BASE = next((ROOT / "models").iterdir())


def _gold_sample(cfg, lm, checkpoint, tok, prompts, k, seed, progress, context):
    """Answers every prompt with a right answer: the gold answer of the prompt's question."""
    return [[f"so #### {ANSWERS[p]}"] * k for p in prompts]


def _half_nll(cfg, lm, checkpoint, tok, prompts, targets, context):
    n_tokens = np.array([len(t) for t in targets])
    return 0.5 * n_tokens, n_tokens


ANSWERS: dict[str, str] = {}


def test_a_backend_registered_in_one_place_records(monkeypatch, tmp_path):
    from premem import model as model_lib, tasks

    monkeypatch.setitem(backends.BACKENDS, "oracle", backends.Backend(sample=_gold_sample, target_nll=_half_nll))
    cfg = load_params(dict(backend="oracle", n_train=4, n_test=2, k=3, k_test=3, tau_rule="fixed", tau=-1.0))
    train, test = data_lib.load_examples(cfg)
    ANSWERS.update({tasks.format_prompt(ex, cfg.prompt_template): ex.answer for ex in train + test})
    lm, tok = model_lib.load_base(str(BASE))
    folder = record.start_run(tmp_path, "r", lr=1e-3, epochs=1, data_fraction=1.0, seed=0, examples=train)
    measure = recorder.Recorder(cfg, train, test, baselines=False)
    assert measure.record(folder, "r", 0, 1, 1.0, lm, tok)
    samples = record_schema.read_table(record.part_path(folder, "samples", 1), "samples")
    assert len(samples) == 3 * (4 + 2) and samples.correct.all()
    ppl = record_schema.read_table(record.part_path(folder, "perplexity", 1), "perplexity")
    np.testing.assert_allclose(ppl.perplexity, np.exp(0.5))


def test_what_a_backend_declares_reaches_the_checks(monkeypatch):
    engine = backends.Backend(sample=_gold_sample, target_nll=_half_nll, engine=True,
                              refuses=lambda params: "no LoRA here" if params.get("lora") else None)
    monkeypatch.setitem(backends.BACKENDS, "engine", engine)
    with pytest.raises(PremError, match="stages: backend engine records with an engine of its own"):
        sweep.check_launch(load_params(dict(backend="engine")))
    sweep.check_launch(load_params(dict(backend="engine", stages="separate")))
    with pytest.raises(PremError, match="key 'backend': no LoRA here"):
        sweep.check_launch(load_params(dict(backend="engine", stages="separate", lora=dict(r=4))))
    with pytest.raises(PremError, match="key 'backend': unknown 'tgi'; known: auto, transformers, vllm"):
        backends.check(dict(backend="tgi"))
    assert backends.get("auto") is backends.BACKENDS["transformers"]


@pytest.mark.parametrize("listed, nodes", [("0\n", 1), ("0-1\n", 2), ("0,2-3\n", 3), (None, 1)])
def test_vllms_engine_is_built_in_the_process_on_one_memory_node_only(tmp_path, monkeypatch, listed, nodes):
    """vllm_process.in_process: on a CPU of one NUMA memory node, unless the environment says otherwise
    (vLLM's CPU worker would bind the whole process's memory to one node of several)."""
    from premem import vllm_process

    path = tmp_path / "has_memory"
    if listed is not None:
        path.write_text(listed)
    assert vllm_process.memory_nodes(path) == nodes
    monkeypatch.setattr(vllm_process, "memory_nodes", lambda: nodes)
    monkeypatch.delenv(vllm_process.SWITCH, raising=False)
    assert vllm_process.in_process() == (nodes == 1)
    for given, here in (("0", True), ("1", False)):  # the environment's choice wins, either way
        monkeypatch.setenv(vllm_process.SWITCH, given)
        assert vllm_process.in_process() == here
