"""Threshold calibration and the baseline predictors, on hand-made runs."""

import numpy as np
import pytest

from premem import metrics, predictors
from premem.dynamics import RunDynamics
from premem.errors import PremError


def ppl(loglog):
    return np.exp(np.exp(np.asarray(loglog, dtype=float)))


def test_calibrate_tau_is_the_pooled_quantile():
    held = [ppl([[-1.0, -0.5], [0.0, 0.5]]), ppl([[1.0, np.nan]])]
    # Pooled log(log(p)): -1, -0.5, 0, 0.5, 1 (NaN dropped); the median is 0.
    assert metrics.calibrate_tau(held, 0.5) == pytest.approx(0.0)
    assert metrics.calibrate_tau(held, 0.25) == pytest.approx(-0.5)
    with pytest.raises(PremError, match="n_heldout"):
        metrics.calibrate_tau([np.full((2, 2), np.nan)])


def test_chosen_tau_follows_the_rule():
    from premem.config import load_params

    run = RunDynamics(run="r", steps=[1], train_acc=[[0.5]], perplexity=[[2.0]], test_acc=[0.5],
                      heldout_perplexity=ppl([[-1.0, 0.0, 1.0]]))
    assert metrics.chosen_tau(load_params(dict(tau=-2.0, tau_rule="fixed")), [run])[0] == -2.0
    tau, how = metrics.chosen_tau(load_params(dict(tau_rule="heldout", tau_quantile=0.5)), [run])
    assert tau == pytest.approx(0.0) and "held-out" in str(how)
    assert (how.rule, how.quantile, how.value) == ("heldout", 0.5, tau) and how.n_values > 0


def test_atc_threshold_matches_source_accuracy_with_ties():
    conf = np.array([1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.5, 0.25])
    t, w = predictors.atc_threshold(conf, accuracy=0.5)
    # 4 of 8 above 0.5 would be 0.5 exactly: t = 0.5 with no weight on ties... or 0.75 with all.
    assert predictors.atc_predict(conf, t, w) == pytest.approx(0.5)
    t, w = predictors.atc_threshold(conf, accuracy=0.375)
    assert t == 0.75 and w == pytest.approx(0.5)  # 2 above, 1 of the 2 ties
    assert predictors.atc_predict(conf, t, w) == pytest.approx(0.375)
    assert predictors.atc_predict(np.ones(4), t, w) == 1.0


def make_runs():
    # Three runs where pre-mem accuracy tracks test accuracy and train accuracy does not.
    runs = []
    for i, test in enumerate([0.2, 0.5, 0.8]):
        acc = np.array([[test, test], [1.0, 1.0]])  # train accuracy ends at 1 everywhere
        loglog = np.array([[0.0, 0.0], [-5.0, -5.0]])  # memorised at the second checkpoint
        runs.append(RunDynamics(run=f"r{i}", steps=[1, 2], train_acc=acc, perplexity=ppl(loglog),
                                test_acc=[test * 0.9, test], extra={"param_distance": np.array([i, 2 * i + 1.0])},
                                test_confidence=np.array([[test, 1.0], [test, 1.0]])))
    return runs


def test_compare_ranks_pre_mem_above_train_accuracy():
    table = predictors.predictor_table(make_runs(), tau=-2.0)
    assert set(predictors.PREDICTORS) - {"train_loss", "mean_perplexity", "grad_variance"} <= set(table.columns)
    out = predictors.compare(table)
    r2 = dict(zip(out.predictor, out.r2))
    assert r2["pre_mem_acc"] > 0.95 and r2["pre_mem_acc"] > r2["train_acc"] + 0.3
    assert out.predictor.iloc[0] == "pre_mem_acc"
    assert out.loc[out.predictor == "pre_mem_acc", "kendall_tau"].item() > 0.8
    with pytest.raises(PremError, match="nope"):
        predictors.predictor_table(make_runs(), tau=-2.0, atc_source="nope")


def test_r2_by_tau_and_subsampling():
    runs = make_runs()
    curve = metrics.r2_by_tau(runs, [-6.0, -2.0])
    # At tau -6 nothing is memorised: pre-mem equals train accuracy; at -2 it tracks test accuracy.
    assert curve.r2.iloc[1] > curve.r2.iloc[0]
    sub = predictors.subsample_r2(runs, -2.0, [0.5, 1.0], n_boot=5)
    assert list(sub.fraction) == [0.5, 1.0] and sub.r2_mean.iloc[1] == pytest.approx(curve.r2.iloc[1])
    early = predictors.early_prediction(runs, -2.0)
    assert len(early) == 6 and set(early.progress) == {0.5, 1.0}


def test_datasets_are_compared_and_thresholded_each_on_its_own():
    """A table of two datasets: one block of fits per dataset, equal to fitting each alone, at each
    dataset's own tau; a fit over the mixture would be another number."""
    from premem.dynamics import by_dataset, checkpoint_table

    a = make_runs()
    b = [RunDynamics(run=f"m{i}", dataset="math", steps=r.steps, train_acc=r.train_acc / 4,
                     perplexity=r.perplexity, test_acc=r.test_acc[::-1] / 4) for i, r in enumerate(a)]
    for r in a:
        r.dataset = "gsm8k"
    assert list(by_dataset(b + a)) == ["math", "gsm8k"]
    assert list(by_dataset(a + b, ["math"])) == ["math"]
    # tau -6 for math memorises nothing there: its pre-mem accuracy is its train accuracy.
    table = checkpoint_table(a + b, {"gsm8k": -2.0, "math": -6.0})
    assert table.groupby("dataset").tau.unique().to_dict() == {"gsm8k": [-2.0], "math": [-6.0]}
    m = table[table.dataset == "math"]
    np.testing.assert_allclose(m.pre_mem_acc, m.train_acc)
    with pytest.raises(PremError, match="no tau for its dataset 'math'"):
        checkpoint_table(b, {"gsm8k": -2.0})
    out = predictors.compare(table, ["pre_mem_acc", "train_acc"])
    assert out.dataset.tolist() == ["gsm8k"] * 2 + ["math"] * 2
    for dataset, g in out.groupby("dataset"):
        alone = predictors.compare(table[table.dataset == dataset].drop(columns="dataset"), ["pre_mem_acc", "train_acc"])
        np.testing.assert_allclose(g.r2, alone.r2)
    mixed = metrics.fit_predictor(table.pre_mem_acc, table.test_acc).r2
    assert all(abs(mixed - r) > 0.05 for r in out[out.predictor == "pre_mem_acc"].r2)


def test_predictor_panels_lay_datasets_side_by_side():
    import matplotlib

    matplotlib.use("Agg")
    from premem import plots
    from premem.dynamics import checkpoint_table

    runs = make_runs()
    one = plots.predictor_panels(checkpoint_table(runs, -2.0), ["pre_mem_acc", "train_acc"])
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in one.axes] == [(1, 2)] * 2
    for i, r in enumerate(runs):
        r.dataset = "gsm8k" if i < 2 else "math"
    runs.append(RunDynamics(run="m1", dataset="math", steps=[1, 2], train_acc=[[0.1, 0.1], [1.0, 1.0]],
                            perplexity=ppl([[0.0, 0.0], [-5.0, -5.0]]), test_acc=[0.05, 0.1]))
    runs.append(RunDynamics(run="m2", dataset="math", steps=[1], train_acc=[[0.3, 0.3]],
                            perplexity=ppl([[0.0, 0.0]]), test_acc=[0.2]))
    two = plots.predictor_panels(checkpoint_table(runs, {"gsm8k": -2.0, "math": -1.7}), ["pre_mem_acc", "train_acc"])
    # Rows are predictors, columns datasets; each panel titled by its dataset and threshold.
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in two.axes] == [(2, 2)] * 4
    assert [ax.get_title() for ax in two.axes] == ["gsm8k: 2 runs, tau -2", "math: 3 runs, tau -1.7"] * 2
    # y is shared within a dataset's column, never across: math's test accuracy tops out at 0.8.
    top_gsm8k, top_math = two.axes[0].get_ylim()[1], two.axes[1].get_ylim()[1]
    assert two.axes[2].get_ylim()[1] == top_gsm8k and two.axes[3].get_ylim()[1] == top_math != top_gsm8k


def test_a_predictor_registered_in_one_place_flows_through(monkeypatch):
    """memorized_frac is a checkpoint_table column but no predictor: one entry makes it one, with
    its label on the figure and, being on test accuracy's scale, its R² of y = x."""
    import matplotlib

    matplotlib.use("Agg")
    from premem import plots

    table = predictors.predictor_table(make_runs(), tau=-2.0)
    assert "memorized_frac" not in set(predictors.compare(table).predictor)
    monkeypatch.setitem(predictors.PREDICTORS, "memorized_frac",
                        predictors.Predictor("share of training examples memorised", accuracy_like=True))
    row = predictors.compare(table).set_index("predictor").loc["memorized_frac"]
    fit = metrics.fit_predictor(table.memorized_frac, table.test_acc)
    assert row.r2 == pytest.approx(fit.r2) and row.r2_identity == pytest.approx(fit.r2_identity)
    fig = plots.predictor_panels(table, ["pre_mem_acc", "memorized_frac"])
    assert fig.axes[1].get_xlabel() == "share of training examples memorised"
    assert "R² vs y=x" in fig.axes[1].get_legend().get_texts()[-1].get_text()
