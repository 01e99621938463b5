"""Threshold calibration and the baseline predictors, on hand-made runs."""
import math

import numpy as np
import pandas as pd
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
    assert metrics.chosen_tau(load_params(dict(tau=-2.0)), [run])[0] == -2.0
    tau, how = metrics.chosen_tau(load_params(dict(tau_rule="heldout", tau_quantile=0.5)), [run])
    assert tau == pytest.approx(0.0) and "held-out" in how


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
