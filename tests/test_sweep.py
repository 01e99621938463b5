"""The sweep end to end on params/smoke.yaml: tables, resume after a kill, and bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from premem import bases, record, sweep
from premem.config import load_params
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


def smoke(tmp, **overrides):
    overrides.setdefault("workers", 1)
    return load_params(SMOKE, cache_dir=str(tmp / "cache"), **overrides)


@pytest.fixture(scope="module")
def smoke_record(smoke_sweep):
    return smoke_sweep  # conftest's, shared with other files


def test_tables_have_the_documented_columns_and_sizes(smoke_record):
    cfg, out = smoke_record
    samples = pd.read_parquet(out / "samples.parquet")
    ppl = pd.read_parquet(out / "perplexity.parquet")
    runs = pd.read_parquet(out / "runs.parquet")
    assert list(samples.columns) == ["run", "step", "epoch", "split", "example_id", "sample_idx", "correct",
                                     "correct_strict", "parse_ok", "answer"]
    assert list(ppl.columns) == ["run", "step", "epoch", "example_id", "trained", "nll", "n_tokens", "perplexity"]
    assert len(runs) == len(cfg.lrs) * len(cfg.epochs) * len(cfg.data_fractions) * len(cfg.seeds)
    for r in runs.itertuples():
        n_ckpt = max(cfg.epochs) // cfg.save_every_epochs
        s = samples[samples.run == r.run]
        assert s.step.nunique() == n_ckpt
        # k samples per train example and per test example at each checkpoint.
        assert len(s[s.split == "train"]) == n_ckpt * r.n_train * cfg.k
        assert len(s[s.split == "test"]) == n_ckpt * cfg.n_test * cfg.k
        p = ppl[ppl.run == r.run]
        # Every trained example, and the held-out ones no run trains on, at every checkpoint.
        assert p.trained.sum() == n_ckpt * r.n_train and (~p.trained).sum() == n_ckpt * cfg.n_heldout
        trained_ids = set(json.loads((out / "runs" / r.run / "run.json").read_text())["example_ids"])
        assert set(p[p.trained].example_id) == trained_ids and not set(p[~p.trained].example_id) & trained_ids
        np.testing.assert_allclose(p.perplexity, np.exp(p.nll / p.n_tokens))
    # Nested data fractions: the half run's examples are a subset of the full run's.
    ids = {r.data_fraction: set(json.loads((out / "runs" / r.run / "run.json").read_text())["example_ids"])
           for r in runs[runs.lr == cfg.lrs[0]].itertuples()}
    assert ids[0.5] < ids[1.0] and len(ids[0.5]) == cfg.n_train // 2
    config = json.loads((out / "config.json").read_text())
    assert config["hash"] == cfg.hash() and "torch" in config["provenance"][0]["versions"]


def test_record_reads_into_dynamics(smoke_record):
    cfg, out = smoke_record
    runs = record.read_runs(out)
    samples = pd.read_parquet(out / "samples.parquet")
    r = runs[0]
    s = samples[(samples.run == r.run) & (samples.split == "train")]
    want = s.groupby(["step", "example_id"]).correct.mean().unstack()
    np.testing.assert_allclose(r.train_acc, want.to_numpy())
    t = samples[(samples.run == r.run) & (samples.split == "test")].groupby("step").correct.mean()
    np.testing.assert_allclose(r.test_acc, t.to_numpy())
    assert set(r.extra) >= {"param_distance", "grad_variance", "train_loss", "mean_perplexity"}
    assert r.extra["param_distance"][-1] > 0
    assert r.heldout_perplexity.shape == (len(r.steps), cfg.n_heldout)
    # Majority share by hand for one test example at the first checkpoint.
    first = samples[(samples.run == r.run) & (samples.split == "test") & (samples.step == r.steps[0])]
    ex = sorted(first.example_id.unique())[0]
    answers = first[first.example_id == ex].answer.fillna("<unparseable>")
    col = list(sorted(first.example_id.unique())).index(ex)
    assert r.test_confidence[0, col] == answers.value_counts().max() / len(answers)


def test_fit_on_a_record_is_one_dataset_at_its_own_threshold(smoke_record, capsys):
    from premem import metrics
    from premem.cli import main

    cfg, out = smoke_record
    runs = record.read_runs(out)
    assert {r.dataset for r in runs} == {cfg.task}
    assert main(["fit", str(out), "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    s = json.loads(line)
    tau, how = metrics.chosen_tau(cfg, runs)  # smoke's held-out rule, not a threshold of the authors'
    assert (s["dataset"], s["tau"], s["tau_from"]) == ("arith", pytest.approx(tau), str(how))
    assert s["n_points"] == sum(len(r.steps) for r in runs)
    assert main(["fit", str(out), "--json", "--tau", "-1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["tau"] == -1.5


def test_rerun_recomputes_nothing(smoke_record, monkeypatch):
    cfg, out = smoke_record
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/parts/*.parquet")}
    monkeypatch.setattr(sweep, "train_and_record", lambda *a, **k: pytest.fail("a finished run was redone"))
    sweep.sweep(cfg, out=out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/parts/*.parquet")} == before


def test_kill_and_resume_gives_identical_tables(smoke_record, tmp_path):
    cfg, reference = smoke_record
    out = tmp_path / "record"
    code = ("import sys; from premem.config import load_params; from premem.sweep import sweep; "
            f"sweep(load_params({str(SMOKE)!r}, cache_dir={str(cfg.cache_dir)!r}, workers=1), "
            f"out={str(out)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("runs/*/parts/samples-*.parquet")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob("runs/*/parts/samples-*.parquet")), "the sweep recorded nothing before the kill"
    assert not (out / "samples.parquet").exists(), "killed too late to test resuming"
    sweep.sweep(cfg, out=out, progress=False)
    for table in ("samples", "perplexity", "checkpoints", "runs"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{table}.parquet"),
                                      pd.read_parquet(reference / f"{table}.parquet"))


def test_record_of_another_config_is_refused(smoke_record, tmp_path):
    cfg, out = smoke_record
    other = cfg.model_copy(update={"k": cfg.k + 1})
    with pytest.raises(PremError, match="another config"):
        sweep.sweep(other, out=out, progress=False)


@pytest.mark.parametrize("overrides, match", [
    (dict(task="no_such_task"), "no_such_task"),
    (dict(base_model="/no/such/model"), "/no/such/model"),
    (dict(data_fractions=[1.5]), "data_fractions"),
])
def test_bad_input_is_named(tmp_path, overrides, match):
    with pytest.raises(PremError, match=match):
        sweep.sweep(smoke(tmp_path, **overrides), out=tmp_path / "record", progress=False)


def test_max_checkpoints_bounds_the_record():
    cfg = load_params(dict(max_checkpoints=5))
    assert [sweep.save_every(cfg, e) for e in (3, 10, 30, 31)] == [1, 2, 6, 7]
    assert sweep.save_every(load_params(dict(save_every_epochs=2, max_checkpoints=None)), 30) == 2


def test_premem_beats_train_accuracy_when_runs_memorise(tmp_path):
    """Claim 1's contrast at smoke scale (the test the CPU default cannot afford): at lr 2e-3 for 15
    epochs the runs memorise their 16 examples, train accuracy climbs while test accuracy falls, so
    final train accuracy stops predicting test accuracy and pre-mem accuracy still does. Plain
    smoke (2 epochs) memorises nothing: there both R² are equal."""
    import torch

    from premem import metrics, predictors

    torch.set_num_threads(1)
    cfg = smoke(tmp_path, n_train=16, n_test=32, batch_size=4, lrs=[1e-4, 2e-3], epochs=[2, 15],
                data_fractions=[1.0], max_checkpoints=3)
    runs = record.read_runs(sweep.sweep(cfg, out=tmp_path / "record", progress=False))
    tau, _ = metrics.chosen_tau(cfg, runs)
    table = predictors.predictor_table(runs, tau)
    r2 = predictors.compare(table, ["pre_mem_acc", "train_acc"]).set_index("predictor").r2
    assert r2["pre_mem_acc"] > r2["train_acc"] + 0.25
    last = table[table.run.str.startswith("lr0.002_ep15")].iloc[-1]
    assert last.memorized_frac > 0.5 and last.train_acc > last.pre_mem_acc + 0.2  # it did memorise


@pytest.mark.parametrize("options, steps", [(None, {2, 3, 4}), ({"min_steps": 1, "max_steps": 1}, {1})])
def test_embedded_base_pretrains_on_its_own_task_options(monkeypatch, tmp_path, options, steps):
    """embedded_pretrain_task_options picks the pretraining pool (None: the finetuning task's options)."""
    from premem import embedded

    seen = {}
    monkeypatch.setattr(embedded, "build_embedded_base", lambda texts, **kw: seen.setdefault("texts", texts))
    cfg = load_params("params/tiny.yaml", embedded_pretrain_examples=300, embedded_pretrain_task_options=options,
                      cache_dir=str(tmp_path))
    bases.base_model_path(cfg, progress=False)
    # Each step of an arith trace writes one equation "a op k = v".
    assert {t.count(" = ") for t in seen["texts"]} == steps
    assert len(seen["texts"]) == 300
    if options is not None:
        with pytest.raises(PremError, match=r"embedded_pretrain_task_options: task 'arith': unknown options \['steps'\]"):
            bases.base_model_path(load_params("params/tiny.yaml", embedded_pretrain_task_options={"steps": 1}))


def test_default_and_smoke_bases_are_shipped(tmp_path, monkeypatch):
    """params/tiny.yaml and params/smoke.yaml find the base in models/ (a fresh clone never pretrains),
    and it is the BPE base the params name."""
    from premem import embedded
    from premem.config import project_root

    def no_pretraining(*a, **k):
        raise AssertionError("pretrained: the default's base is not in models/")

    monkeypatch.setattr(embedded, "pretrain", no_pretraining)
    paths = {bases.base_model_path(load_params(f"params/{name}.yaml", cache_dir=str(tmp_path)), progress=False)
             for name in ("tiny", "smoke")}  # a cache of its own: no recipe noted there yet
    assert len(paths) == 1
    path = Path(paths.pop())
    assert path.parent == project_root() / bases.SHIPPED_MODELS
    hp = json.loads((path / "premem_embedded.json").read_text())["hp"]
    assert (hp["tokenizer"], hp["vocab_size"], hp["seq_len"]) == ("bpe", 800, 192)
    # The recipe is noted beside the cache: the next process finds the folder without drawing texts.
    memos = list((tmp_path / "embedded" / "recipes").iterdir())
    assert len(memos) == 1 and memos[0].read_text() == str(path)
    monkeypatch.setattr(bases, "_pretraining_texts", lambda *a: no_pretraining())
    assert bases.base_model_path(load_params("params/tiny.yaml", cache_dir=str(tmp_path)), progress=False) == str(path)
    memos[0].write_text(str(tmp_path / "gone"))  # a noted folder that is gone: the texts are drawn again
    with pytest.raises(AssertionError, match="pretrained"):
        bases.base_model_path(load_params("params/tiny.yaml", cache_dir=str(tmp_path)), progress=False)
    # Only where premem's code alone makes the examples: a user's file can change under the same recipe.
    assert bases._recipe_memo(("jsonl", 10, 0, "{}", "", ""), dict(cache_dir=tmp_path)) is None
