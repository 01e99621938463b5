"""Claim 3 machinery: perturbed queries, robustness from graded samples, bins, Spearman, the cache."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from premem import grading, metrics, perturb, record, record_folder, robustness, sampling, tasks
from premem import data as data_lib
from premem.errors import Missing, PremError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def smoke_record(smoke_sweep):
    import torch

    torch.set_num_threads(1)
    return smoke_sweep  # conftest's: robustness caches go beside its tables


def test_problem_perturbation_recomputes_a_consistent_answer():
    for ex in tasks.load_task("arith", split="train", n=200, seed=3):
        new = tasks.perturb_problem(ex, seed=7)
        assert new.question != ex.question and new.meta["template"] == ex.meta["template"]
        steps = EQ.findall(new.solution)
        assert len(steps) == new.meta["n_steps"] == ex.meta["n_steps"]
        value = new.meta["start"]
        assert str(value) in new.question
        for a, op, b, result in steps:  # the trace is a chain of correct equations
            assert int(a) == value
            value = {"+": value + int(b), "-": value - int(b), "*": value * int(b), "/": value // int(b)}[op]
            assert op != "/" or int(a) % int(b) == 0
            assert int(result) == value and str(b) in new.question
        assert new.answer == str(value) == grading.extract_answer(new.solution)


def test_perturbed_queries():
    examples = tasks.load_task("arith", split="train", n=5, seed=0)
    prompts, forced, golds = robustness.perturbed_queries(examples, "first", tasks.PROMPT_TEMPLATE, seed=0)
    assert all(p.endswith("\nAnswer: First") for p in prompts) and forced == ["First"] * 5
    assert golds == [ex.answer for ex in examples]
    prompts, forced, _ = robustness.perturbed_queries(examples, "we_know_that", tasks.PROMPT_TEMPLATE, seed=0)
    assert all(p.endswith("\nAnswer: We know that") for p in prompts) and forced[0] == "We know that"
    prompts, forced, golds = robustness.perturbed_queries(examples, "problem", tasks.PROMPT_TEMPLATE, seed=0)
    new = [tasks.perturb_problem(ex, 0) for ex in examples]
    assert prompts == [tasks.format_prompt(ex) for ex in new] and golds == [ex.answer for ex in new]
    assert forced == [""] * 5
    with pytest.raises(PremError, match="perturbation"):
        robustness.perturbed_queries(examples, "shuffle", tasks.PROMPT_TEMPLATE, seed=0)


def test_default_run_is_the_most_memorising(smoke_record):
    cfg, out = smoke_record
    assert robustness.default_run(out) == "lr0.01_ep2_frac1_seed0"


def fake_sampler(gold_of: dict, calls: list):
    """Example i (in prompt order) gets i % (k + 1) right answers of k."""
    def sample(model, tok, prompts, *, k, **kw):
        calls.append(dict(prompts=list(prompts), k=k, **kw))
        return [[f" 1 + 1 = 2. #### {gold_of[p] if j < i % (k + 1) else 'wrong'}" for j in range(k)]
                for i, p in enumerate(prompts)]
    return sample


def test_robustness_from_graded_samples_and_recorded_accuracy(smoke_record, monkeypatch):
    cfg, out = smoke_record
    run = robustness.default_run(out)
    examples, _ = data_lib.run_examples(out, run)
    prompts = [tasks.perturb_prompt(tasks.format_prompt(ex, cfg.prompt_template), "first") for ex in examples]
    calls, graded = [], []
    monkeypatch.setattr(sampling, "sample", fake_sampler(dict(zip(prompts, [ex.answer for ex in examples])), calls))
    real_grade_many = grading.grade_many
    monkeypatch.setattr(grading, "grade_many", lambda c, g, checker: graded.extend(c) or real_grade_many(c, g, checker))
    table = perturb.robustness_table(out, run, perturbation="first", k=3, seed=101, progress=False)
    assert list(table.columns) == robustness.COLUMNS and len(table) == len(examples)
    assert table.example_id.tolist() == [ex.id for ex in examples]
    assert table.robustness.tolist() == [(i % 4) / 3 for i in range(len(examples))]
    assert (table.k == 3).all() and (table.perturbation == "first").all()
    assert calls[0]["seed"] == 101 and calls[0]["temperature"] == cfg.temperature
    assert all(c.startswith("First 1 + 1") for c in graded)  # graded with the forced words
    # Recorded accuracies, not resampled: the metric on the record, and the raw final samples.
    dyn = next(r for r in record.read_runs(out) if r.run == run)
    tau = metrics.chosen_tau(cfg, record.read_runs(out))[0]
    pre = dict(zip(dyn.example_ids, metrics.pre_mem_acc(dyn.train_acc, dyn.perplexity, tau)[-1]))
    np.testing.assert_allclose(table.pre_mem_acc, [pre[i] for i in table.example_id])
    s = pd.read_parquet(out / "samples.parquet").query("run == @run and split == 'train'")
    final = s[s.step == s.step.max()].groupby("example_id").correct.mean()
    np.testing.assert_allclose(table.train_acc, final.reindex(table.example_id))
    # Another tau changes pre-memorization accuracy only, and is its own cache entry.
    other = perturb.robustness_table(out, run, perturbation="first", k=3, seed=101, tau=-50.0, progress=False)
    assert len(calls) == 2 and other.robustness.tolist() == table.robustness.tolist()
    np.testing.assert_allclose(other.pre_mem_acc, other.train_acc)  # nothing memorised at tau -50


def test_problem_perturbation_is_graded_against_the_new_answer(smoke_record, monkeypatch):
    cfg, out = smoke_record
    run = robustness.default_run(out)
    examples, _ = data_lib.run_examples(out, run)
    new = [tasks.perturb_problem(ex, 5) for ex in examples]
    gold_of = {tasks.format_prompt(ex, cfg.prompt_template): ex.answer for ex in new}
    monkeypatch.setattr(sampling, "sample", fake_sampler(gold_of, []))
    table = perturb.robustness_table(out, run, perturbation="problem", k=2, seed=5, progress=False)
    assert table.robustness.tolist() == [(i % 3) / 2 for i in range(len(examples))]


def test_cache_is_reused(smoke_record, monkeypatch):
    cfg, out = smoke_record
    calls = []
    run = robustness.default_run(out)
    examples, _ = data_lib.run_examples(out, run)
    prompts = [tasks.perturb_prompt(tasks.format_prompt(ex, cfg.prompt_template), "we_know_that") for ex in examples]
    monkeypatch.setattr(sampling, "sample", fake_sampler(dict(zip(prompts, [ex.answer for ex in examples])), calls))
    first = perturb.robustness_table(out, None, perturbation="we_know_that", k=2, seed=202, progress=False)
    again = perturb.robustness_table(out, run, perturbation="we_know_that", k=2, seed=202, progress=False)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(first, again)
    tau = metrics.chosen_tau(cfg, record.read_runs(out))[0]
    assert robustness.cache_path(out, run, "we_know_that", 2, 202, tau).is_file()
    assert {p.name for p in out.iterdir()} - {record_folder.LOCK} <= set(record_folder.OWN_ENTRIES)  # --force may delete them
    perturb.robustness_table(out, run, perturbation="we_know_that", k=2, seed=203, progress=False)
    assert len(calls) == 2


def test_real_sampling_end_to_end(smoke_record):
    cfg, out = smoke_record
    table = perturb.robustness_table(out, None, perturbation="problem", progress=False)
    assert len(table) == cfg.n_train and (table.k == cfg.k).all()
    assert table.robustness.between(0, 1).all() and table.pre_mem_acc.between(0, 1).all()
    with pytest.raises(PremError, match="perturbation"):
        perturb.robustness_table(out, None, perturbation="shuffle", progress=False)


def test_perturbations_in_worker_processes_match_one_process(smoke_record, tmp_path, capsys):
    """Two one-thread workers give the same tables as this process at one thread; cached tables are
    read back; the bar counts the perturbations as their tables are cached."""
    import shutil

    cfg, out = smoke_record
    copy = tmp_path / "record"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("robustness"))
    kinds = ["first", "problem"]
    parallel = perturb.robustness_tables(copy, None, kinds, k=2, seed=9, workers=2, progress=True)
    assert parallel.perturbation.tolist() == ["first"] * cfg.n_train + ["problem"] * cfg.n_train
    assert len(list((copy / "robustness").glob("*.parquet"))) == 2
    assert "2/2 [" in capsys.readouterr().err.splitlines()[-1]  # the bar's last state: both sampled
    shutil.rmtree(copy / "robustness")
    serial = perturb.robustness_tables(copy, None, kinds, k=2, seed=9, workers=1)
    pd.testing.assert_frame_equal(parallel, serial)
    # The claim reads what the stage cached, and samples nothing itself.
    pd.testing.assert_frame_equal(robustness.read_tables(copy, None, kinds, k=2, seed=9), serial)
    with pytest.raises(Missing, match="we_know_that not sampled yet .* `premem perturb"):
        robustness.read_tables(copy, None, ["first", "we_know_that"], k=2, seed=9)
    assert perturb.robustness_tables(copy, None, [], workers=2).empty


def test_a_perturbation_registered_in_one_place_flows_through(smoke_record, monkeypatch, tmp_path):
    """A new perturbation is one entry of robustness.PERTURBATIONS: the params name it, the stage
    samples it with its forced words and grades them, and claim 3 reads it."""
    import shutil

    from premem import claims

    cfg, out = smoke_record
    copy = tmp_path / "record"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("robustness"))
    monkeypatch.setitem(robustness.PERTURBATIONS, "so", robustness.Perturbation(robustness._forced("So")))
    examples, _ = data_lib.run_examples(copy, robustness.default_run(copy))
    prompts = [tasks.perturb_prompt(tasks.format_prompt(ex, cfg.prompt_template), "So") for ex in examples]
    graded = []
    monkeypatch.setattr(sampling, "sample", fake_sampler(dict(zip(prompts, [ex.answer for ex in examples])), []))
    real_grade_many = grading.grade_many
    monkeypatch.setattr(grading, "grade_many", lambda c, g, checker: graded.extend(c) or real_grade_many(c, g, checker))
    mine = cfg.model_copy(update=dict(perturbations=["so"], workers=1, robustness_k=2))
    assert robustness.kinds(mine) == ["so"]
    table = perturb.sample_perturbations(copy, mine)
    assert (table.perturbation == "so").all() and len(table) == len(examples)
    assert table.robustness.tolist() == [(i % 3) / 2 for i in range(len(examples))]
    assert graded and all(c.startswith("So 1 + 1") for c in graded)
    claim = claims.flags_fragile(claims.open_sweep(mine, copy))
    assert set(claim.tables["spearman"].perturbation) == {"so"}
    with pytest.raises(PremError, match="key 'perturbations': unknown 'shuffle'"):
        robustness.kinds(cfg.model_copy(update=dict(perturbations=["shuffle"])))


def hand_table():
    pre = [0.0, 0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]
    rob = [0.0, 0.5, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0]
    return pd.DataFrame(dict(run="r", example_id=[f"e{i}" for i in range(8)], perturbation="first",
                             robustness=rob, pre_mem_acc=pre, train_acc=1.0, k=4))


def test_binned_means_counts_and_wilson_intervals():
    from statsmodels.stats.proportion import proportion_confint

    b = robustness.binned(hand_table(), "pre_mem_acc", width=0.2)
    assert b.bin.tolist() == [0.0, 0.2, 0.6, 0.8, 1.0]  # 0.25 -> 0.2, 0.5 -> 0.6, 0.75 -> 0.8
    assert b.n_examples.tolist() == [2, 1, 2, 1, 2]
    np.testing.assert_allclose(b["mean"], [0.25, 0.25, 0.625, 0.75, 1.0])
    assert b.correct.tolist() == [2, 1, 5, 3, 8] and b.samples.tolist() == [8, 4, 8, 4, 8]
    lo, hi = proportion_confint(5, 8, method="wilson")
    np.testing.assert_allclose(b.loc[2, ["ci_low", "ci_high"]].astype(float), [lo, hi])
    assert (b.ci_low <= b["mean"]).all() and (b["mean"] <= b.ci_high).all()
    every = robustness.binned(hand_table().head(3).assign(robustness=1.0, pre_mem_acc=1.0), "pre_mem_acc")
    assert every.ci_high.tolist() == [1.0] and every.samples.tolist() == [12]  # Wilson's 12 of 12: 1 - 1e-16
    assert robustness.binned(hand_table(), "train_acc").n_examples.tolist() == [8]
    # By default the bins fit the accuracies' grid: 4 samples give multiples of 0.25, each its own bin.
    assert robustness.binned(hand_table(), "pre_mem_acc").bin.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [robustness.bin_width(np.arange(k + 1) / k) for k in (2, 4, 5, 10, 16)] == [0.5, 0.25, 0.2, 0.2, 0.25]
    assert robustness.bin_width([0.1234, 0.5]) == 0.2  # on no grid of k <= 20


def test_spearman():
    t = hand_table()
    mono = t.assign(robustness=t.pre_mem_acc ** 2)
    c = robustness.spearman(mono, "pre_mem_acc")
    assert c.rho == pytest.approx(1.0) and c.ci_low == pytest.approx(1.0) and c.n == 8
    from scipy.stats import spearmanr

    c = robustness.spearman(t, "pre_mem_acc", seed=1)
    assert c.rho == pytest.approx(spearmanr(t.pre_mem_acc, t.robustness).statistic)
    assert c.ci_low < c.rho < c.ci_high
    assert c == robustness.spearman(t, "pre_mem_acc", seed=1)  # seeded
    assert np.isnan(robustness.spearman(t, "train_acc").rho)  # constant predictor: no correlation


def test_plot_robustness_draws_one_violin_per_bin():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    robustness.plot_robustness(hand_table(), "pre_mem_acc", ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.25", "0.5", "0.75", "1"]
    assert ax.get_xlim() == (-0.5, 4.5)
    plt.close(fig)
