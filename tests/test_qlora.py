"""QLoRA on the CPU: bitsandbytes' NF4 runs on these CPUs (no CUDA), so `quantization: 4bit` with
`lora:` trains, saves and records here as on a GPU. One run of the smoke params (6 examples, 2
epochs of 2 steps) on the shipped base loaded in 4 bits: recorded inside training, as a separate
stage (the same first checkpoint; the second to 5%, see the test), and by `premem record` on its
saved adapters over the 4-bit base (the same perplexities at the first checkpoint, to 2e-3 at the
last: see the test), and by `premem record` on the float base, whose perplexities differ from the 4-bit
base's only by NF4's rounding (rtol 5%, the tolerance stated here; measured below 2%)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from premem import sweep, training
from premem import data as data_lib
from premem.cli import main
from premem.config import load_params
from premem.model import load_base

ROOT = Path(__file__).resolve().parents[1]
BASE = next((ROOT / "models").iterdir())
QLORA = dict(n_train=6, n_test=3, n_heldout=2, k=2, lrs=[2e-3], epochs=[2], data_fractions=[1.0], max_new_tokens=24,
             batch_size=4, workers=1, quantization="4bit", lora=dict(r=8, alpha=16), keep_checkpoints="all")
TABLES = ("samples", "perplexity", "checkpoints")


def tables(folder: Path) -> dict:
    return {t: pd.read_parquet(folder / f"{t}.parquet") for t in TABLES}


@pytest.fixture(scope="module")
def qlora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qlora")
    cfg = load_params(ROOT / "params" / "smoke.yaml", cache_dir=str(tmp / "cache"), **QLORA)
    return tmp, cfg, sweep.sweep(cfg, out=tmp / "together", progress=False)


def test_vllm_is_refused_for_qlora(tmp_path):
    """vLLM would score the adapter merged into a float base, not the 4-bit one it was trained on."""
    from premem.errors import PremError

    cfg = load_params(ROOT / "params" / "smoke.yaml", **QLORA, backend="vllm", stages="separate")
    with pytest.raises(PremError, match="key 'backend': vllm serves an adapter merged into a float copy"):
        sweep.sweep(cfg, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_base_loads_in_four_bits_on_the_cpu():
    from bitsandbytes.nn import Linear4bit

    lm, _ = load_base(str(BASE), quantization="4bit")
    assert lm.is_loaded_in_4bit and isinstance(lm.model.layers[0].self_attn.q_proj, Linear4bit)
    assert next(lm.parameters()).device.type == "cpu"


def test_qlora_trains_saves_and_records_together_and_as_a_stage(qlora, tmp_path):
    tmp, cfg, together = qlora
    (run,) = (together / "runs").iterdir()
    saved = sorted((run / "train").glob("checkpoint-*"))
    assert [p.name for p in saved] == ["checkpoint-2", "checkpoint-4"]
    for p in saved:  # adapters only: the 4-bit base is not saved with them
        assert (p / "adapter_model.safetensors").is_file() and not (p / "model.safetensors").is_file()
        assert json.loads((p / "adapter_config.json").read_text())["r"] == 8
    got = tables(together)
    assert sorted(got["perplexity"].step.unique()) == [2, 4] and np.isfinite(got["perplexity"].nll).all()
    # Training moved the adapter: the gold solutions' NLL fell from the first checkpoint to the second.
    p = got["perplexity"][got["perplexity"].trained]
    assert p[p.step == 4].nll.mean() < p[p.step == 2].nll.mean()
    stats = got["checkpoints"]
    assert (stats.param_distance > 0).all() and np.isfinite(stats.grad_variance).all()
    separate = tables(sweep.sweep(cfg.model_copy(update=dict(stages="separate")), out=tmp_path / "separate",
                                  progress=False))
    # The first checkpoint is the same record; after it, a QLoRA run recorded inside training trains on
    # slightly differently from one that was not (full finetuning gives equal tables: test_stages.py),
    # so the second checkpoint agrees to NF4 training's noise, not exactly. Not yet explained.
    for table in TABLES:
        first = [t[t.step == 2].reset_index(drop=True) for t in (separate[table], got[table])]
        pd.testing.assert_frame_equal(*first, check_exact=True)
    np.testing.assert_allclose(separate["perplexity"].nll, got["perplexity"].nll, rtol=0.05)


def test_premem_record_on_the_adapters_over_the_four_bit_and_the_float_base(qlora, tmp_path):
    tmp, cfg, together = qlora
    (run,) = (together / "runs").iterdir()
    train, test, _ = data_lib.load_examples(cfg, heldout=True)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(dict(id=ex.id, question=ex.question, solution=ex.solution, answer=ex.answer)) + "\n"
                            for ex in train))
    want = tables(together)["perplexity"]
    want = want[want.trained].reset_index(drop=True)
    got = {}
    for quantization in ("4bit", None):
        params = tmp_path / f"{quantization}.yaml"
        params.write_text(yaml.safe_dump(dict(name="q", task_options=dict(id="id", checker="marker"), k=2,
                                              max_new_tokens=24, tau=-1.5, tau_rule="fixed", lora=dict(r=8, alpha=16),
                                              quantization=quantization)))
        out = tmp_path / f"rec-{quantization}"
        assert main(["record", str(run / "train"), "--data", str(data), "--params", str(params), "--base", str(BASE),
                     "--out", str(out), "--quiet"]) == 0
        got[quantization] = pd.read_parquet(out / "perplexity.parquet")
    four = got["4bit"]
    assert list(four.example_id) == list(want.example_id) and list(four.step) == list(want.step)
    # The 4-bit base, as training had it: the first checkpoint exactly. At the last, the model training
    # recorded in memory differs slightly from its saved adapter reloaded (8e-4 at most, seen here;
    # full finetuning agrees exactly): not yet explained.
    first = (want.step == 2).to_numpy()
    np.testing.assert_allclose(four.nll[first], want.nll[first], rtol=1e-5)
    np.testing.assert_allclose(four.nll, want.nll, rtol=2e-3)
    float_nll = got[None].nll.to_numpy()
    np.testing.assert_allclose(float_nll, want.nll, rtol=0.05)  # NF4's rounding of the base, nothing more
    assert not np.allclose(float_nll, want.nll, rtol=1e-6)  # ... which is there: the bases differ
    lm, _ = training.load_checkpoint(run / "train" / "checkpoint-4", base=str(BASE), quantization="4bit")
    assert lm.base_model.model.is_loaded_in_4bit
