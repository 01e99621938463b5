import math

import numpy as np
import pytest

from premem import metrics
from premem.errors import PremError

E = math.e


def ppl_for_loglog(x):
    """Perplexity whose log(log(.)) equals x."""
    return math.exp(math.exp(x))


def test_memorized_threshold_and_edge_cases():
    p = np.array([ppl_for_loglog(-3.0), ppl_for_loglog(-2.0), 1.0, np.nan, 5.0])
    assert metrics.memorized(p, -2.3).tolist() == [True, False, True, False, False]
    assert metrics.loglog_perplexity([E ** E])[0] == pytest.approx(1.0)


def test_pre_mem_running_max_and_cap_by_current_accuracy():
    # One example over four checkpoints: learns (0.4, 0.8) without memorising, then memorises.
    acc = np.array([[0.4], [0.8], [1.0], [0.6]])
    mem, free = ppl_for_loglog(-5), ppl_for_loglog(0)
    ppl = np.array([[free], [free], [mem], [mem]])
    got = metrics.pre_mem_acc(acc, ppl, tau=-2.3)[:, 0]
    # j=0: min(0.4, 0.4); j=1: min(0.8, 0.8); j=2: memorised, max stays 0.8, min(0.8, 1.0);
    # j=3: min(0.8, 0.6) = 0.6, capped by the current accuracy.
    assert got.tolist() == pytest.approx([0.4, 0.8, 0.8, 0.6])


def test_all_memorized_is_zero_and_never_memorized_is_train_acc():
    acc = np.array([[0.5, 0.3], [0.9, 0.7]])
    mem, free = ppl_for_loglog(-5), ppl_for_loglog(0)
    ppl = np.array([[mem, free], [mem, free]])
    got = metrics.pre_mem_acc(acc, ppl, -2.3)
    assert got[:, 0].tolist() == [0.0, 0.0]
    assert got[:, 1].tolist() == pytest.approx([0.3, 0.7])
    assert metrics.dataset_mean(got).tolist() == pytest.approx([0.15, 0.35])


def test_nan_handling():
    free = ppl_for_loglog(0)
    acc = np.array([[0.5, np.nan], [np.nan, 0.2], [0.4, 0.9]])
    ppl = np.array([[free, free], [free, np.nan], [free, free]])
    got = metrics.pre_mem_acc(acc, ppl, -2.3)
    # example 0: unmeasured accuracy at j=1 -> NaN there, and the running max (0.5) survives it.
    assert got[0, 0] == 0.5 and np.isnan(got[1, 0]) and got[2, 0] == 0.4
    # example 1: NaN at j=0; perplexity unknown at j=1 so nothing counts yet -> NaN; then 0.9.
    assert np.isnan(got[0, 1]) and np.isnan(got[1, 1]) and got[2, 1] == pytest.approx(0.9)
    assert metrics.dataset_mean(got).tolist()[0] == 0.5
    assert np.isnan(metrics.dataset_mean(np.full((1, 3), np.nan))[0])


def test_vectorised_matches_loop():
    rng = np.random.default_rng(0)
    acc = rng.random((6, 50))
    ppl = np.exp(np.exp(rng.normal(-2, 1, (6, 50))))
    got = metrics.pre_mem_acc(acc, ppl, -2.0)
    for i in range(50):
        best = 0.0
        for j in range(6):
            if not math.log(math.log(ppl[j, i])) < -2.0:
                best = max(best, acc[j, i])
            assert got[j, i] == pytest.approx(min(best, acc[j, i]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(PremError, match="train_acc"):
        metrics.pre_mem_acc(np.zeros((2, 3)), np.ones((2, 4)), -2)


def test_fit_recovers_a_line_and_identity_r2():
    x = np.linspace(0, 1, 20)
    y = 0.5 * x + 0.1 + np.sin(np.arange(20)) * 0.01
    f = metrics.fit_predictor(x, y)
    assert f.slope == pytest.approx(0.5, abs=0.02) and f.intercept == pytest.approx(0.1, abs=0.02)
    assert f.slope_ci[0] < 0.5 < f.slope_ci[1] and f.n_points == 20
    assert f.r2 > 0.99
    # R² against y = x, by hand.
    assert f.r2_identity == pytest.approx(1 - np.sum((y - x) ** 2) / np.sum((y - y.mean()) ** 2))
    perfect = metrics.fit_predictor(x, x)
    assert perfect.r2 == pytest.approx(1.0) and perfect.r2_identity == pytest.approx(1.0)


def test_fit_drops_nan_and_rejects_constant():
    x = np.array([0.1, 0.2, np.nan, 0.4, 0.5])
    y = np.array([0.1, 0.2, 0.3, np.nan, 0.5])
    assert metrics.fit_predictor(x, y).n_points == 3
    with pytest.raises(PremError, match="constant"):
        metrics.fit_predictor(np.ones(5), np.arange(5.0))


def test_fit_of_constant_test_accuracy_has_undefined_r2_and_no_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would also land in a notebook's checked output
        fit = metrics.fit_predictor([0.1, 0.2, 0.3, 0.4], [0.5] * 4)
    assert np.isnan(fit.r2) and np.isnan(fit.r2_identity) and abs(fit.slope) < 1e-9 and fit.n_points == 4


def test_line_band_holds_the_fitted_line_and_narrows_with_data():
    grid = np.linspace(0, 1, 5)
    exact_lo, exact_hi = metrics.line_band([0, 1, 2, 3], [1, 3, 5, 7], grid)  # points on y = 2x + 1
    np.testing.assert_allclose(exact_lo, 2 * grid + 1, atol=1e-9)
    np.testing.assert_allclose(exact_hi, 2 * grid + 1, atol=1e-9)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 400)
    y = 0.5 * x + rng.normal(0, 0.1, 400)
    fit = metrics.fit_predictor(x[:20], y[:20])
    lo, hi = metrics.line_band(x[:20], y[:20], grid)
    line = fit.intercept + fit.slope * grid
    assert np.all(lo < line) and np.all(line < hi)
    np.testing.assert_allclose(hi - line, line - lo)  # symmetric about the line
    wide_lo, wide_hi = metrics.line_band(x, y, grid)
    assert np.all(wide_hi - wide_lo < hi - lo)  # 400 points pin the line down better than 20
