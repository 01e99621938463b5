"""The paper's params hold the authors' own settings: each value against a table read from their
released scripts (kebaek/reasoning_optimizers @ 67c62e8, a fork holding
katiekang1998/reasoning_generalization's files), each with its source named in the file, and the
run list against the authors' released run folders."""
import re
from pathlib import Path

import pytest

from premem import released, run_grid, sweep
from premem.config import load_params
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]

# What both datasets' scripts set (gsm8k_train.py / math_train.py, *_eval_samples.py, utils.py).
BOTH = dict(dtype="float32", warmup_steps=20, max_grad_norm=2.0, model_max_length=1024, save_every_epochs=1,
            max_checkpoints=None, pad_token="add", target_eos=False, prompt_template="{question}\nAnswer:",
            target_template=" {solution}\nDone.", stop="\nDone.", k=5, k_test=5, temperature=0.8, tau_rule="fixed",
            backend="vllm")
AUTHORS = {
    "gsm8k": dict(BOTH, mixed_precision="fp16", batch_size=128, per_device_batch_size=2, weight_decay=0.01,
                  top_p=0.95, max_new_tokens=512, tau=-2.3),
    "math": dict(BOTH, mixed_precision="bf16", batch_size=24, per_device_batch_size=1, weight_decay=0.0,
                 top_p=1.0, max_new_tokens=1024, tau=-1.7),
}
# (lr, epochs, data fraction) of the runs the authors released, from their folder names.
RELEASED_RUNS = {
    "gsm8k": {(lr, ep, 1.0) for lr in (5e-7, 5e-5, 2e-4) for ep in (1, 3, 6)} | {(2e-5, 3, 1.0), (2e-5, 6, 1.0),
                                                                                (2e-5, 6, 0.5), (2e-5, 12, 0.25)},
    "math": {(lr, ep, 1.0) for lr in (5e-7, 5e-5, 2e-4) for ep in (1, 3, 6)} | {(2e-5, 6, 0.5), (2e-5, 12, 0.25)},
}
FILES = [(m, d) for m in ("llama3-8b", "gemma2-9b") for d in ("gsm8k", "math")]


@pytest.mark.parametrize("model, dataset", FILES, ids=[f"{m}_{d}" for m, d in FILES])
def test_paper_params_hold_the_authors_settings(model, dataset):
    path = ROOT / "params" / f"{model}_{dataset}.yaml"
    cfg = load_params(path)
    got = {key: getattr(cfg, key) for key in AUTHORS[dataset]}
    assert got == AUTHORS[dataset]
    assert cfg.task == dataset and cfg.base_model == {"llama3-8b": "meta-llama/Meta-Llama-3-8B",
                                                      "gemma2-9b": "google/gemma-2-9b"}[model]
    assert {(s.lr, s.epochs, s.data_fraction) for s in run_grid.grid(cfg)} == RELEASED_RUNS[dataset]
    # Each value names where it comes from: its line carries a comment naming a script of the authors'.
    lines = {line.split(":", 1)[0]: line for line in path.read_text().splitlines() if re.match(r"^\w+:", line)}
    sourced = [k for k in AUTHORS[dataset] if k not in ("k_test", "target_template", "tau_rule")]
    unsourced = [k for k in sourced if not re.search(r"#.*(\.py|\.sh|\.ipynb|run names)", lines[k])]
    assert not unsourced, f"{path.name}: no source named for {unsourced}"


def test_run_lists_are_the_released_runs(released_root):
    for dataset, runs in RELEASED_RUNS.items():
        names = [p.name for p in released_root.iterdir() if p.name.startswith(f"{dataset}_")]
        parsed = {(r["lr"], r["epochs"], r["data_fraction"]) for r in map(released.parse_run_name, names)}
        assert parsed == runs and len(names) == len(runs), dataset


@pytest.mark.parametrize("data, match", [
    (dict(runs=[dict(lr=2e-5, epochs=6)], lrs=[1e-3]), "an explicit run list replaces lrs, epochs, data_fractions"),
    (dict(runs=[]), "empty run list"),
    (dict(runs=[dict(lr=2e-5, epochs=6, fraction=0.5)]), "unknown key 'runs.0.fraction'"),
    (dict(runs=[dict(lr=-1.0, epochs=6)]), "key 'runs.0.lr'"),
    (dict(mixed_precision="fp8"), "key 'mixed_precision'"),
    (dict(pad_token="unk"), "key 'pad_token'"),
    (dict(batch_size=128, per_device_batch_size=3), "key 'per_device_batch_size': 3 does not divide batch_size 128"),
])
def test_bad_paper_keys_are_named(data, match):
    with pytest.raises(PremError, match=match):
        load_params(data)


def test_later_keys_at_their_default_leave_the_hash_alone():
    """A record made before a key existed keeps its name; a key set away from its default renames it."""
    tiny = load_params(ROOT / "params" / "tiny.yaml")
    # The names the CPU default's and smoke's records had before these keys (and runs/ holds).
    assert (tiny.hash(), load_params(ROOT / "params" / "smoke.yaml").hash()) == ("38159a9d3943", "9470ed4bf151")
    assert tiny.hash() == load_params(dict(name="tiny", warmup_steps=None, target_eos=True)).hash()
    for key, value in dict(warmup_steps=20, mixed_precision="no", model_max_length=64, target_eos=False,
                           pad_token="add", per_device_batch_size=2).items():
        assert tiny.model_copy(update={key: value}).hash() != tiny.hash(), key
    assert load_params(dict(runs=[dict(lr=1e-4, epochs=3)])).hash() != tiny.hash()


@pytest.mark.parametrize("keys, match", [
    (dict(backend="vllm"), "stages: backend vllm .* set stages: separate"),
    (dict(runs=[dict(lr=1e-3, epochs=1), dict(lr=1e-3, epochs=1)]), "listed twice"),
] + ([] if __import__("torch").cuda.is_available() else [(dict(mixed_precision="bf16"), "autocasts on a GPU")]))
def test_a_sweep_refuses_what_this_launch_cannot_do_before_any_work(tmp_path, keys, match):
    cfg = load_params(dict(name="x", n_train=8, n_test=4, n_heldout=2, out_dir=str(tmp_path), **keys))
    with pytest.raises(PremError, match=match):
        sweep.sweep(cfg, progress=False)
    assert not any(tmp_path.iterdir())
