"""The released-logs reader and the paper's main number, against the authors' arrays."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from premem import released
from premem.cli import fit_summary, main
from premem.errors import PremError


@pytest.fixture(scope="module")
def runs(released_root):
    return released.read_runs(released_root)


def test_reference_fit_on_13_gsm8k_runs(runs):
    # Reference computed independently of this code: R² 0.939 on 51 points, 0.935 vs y = x,
    # and 0.40 for final train accuracy.
    s = fit_summary(runs, tau=-2.3)
    assert len(runs) == 13 and s["n_points"] == 51
    assert s["r2"] == pytest.approx(0.939, abs=0.001)
    assert s["r2_identity"] == pytest.approx(0.935, abs=0.001)
    assert s["train_acc_r2"] == pytest.approx(0.40, abs=0.005)


def test_run_layout_is_read_as_released(runs, released_root):
    by_name = {r.run: r for r in runs}
    quarter = by_name["gsm8k_orig_12epochs_quarter_lr2e-05_bs128"]
    idx = np.load(released_root / quarter.run / "subsample_idxs.npy")
    assert quarter.n_examples == len(idx) == 1868
    assert (quarter.lr, quarter.epochs, quarter.data_fraction) == (2e-05, 12, 0.25)
    assert list(quarter.steps) == sorted(quarter.steps) and len(quarter.steps) == 6
    assert quarter.epoch_of_step.tolist() == [2, 4, 6, 8, 10, 12]
    # Rows follow subsample_idxs: the first checkpoint's accuracy equals the raw array's selected rows.
    ckpt = released_root / quarter.run / f"checkpoint-{quarter.steps[0]}"
    raw = np.load(ckpt / "train_answer_types5_seed2_temp0.8.npy")
    assert np.array_equal(quarter.train_acc[0], (raw[idx] == 0).mean(1))
    full = by_name["gsm8k_orig_6epochs_full_lr2e-05_bs128"]
    assert full.n_examples == 7473 and full.data_fraction == 1.0 and len(full.steps) == 6


def test_sample_file_priority(tmp_path):
    ck = tmp_path / "gsm8k_orig_1epochs_full_lr1e-05_bs128" / "checkpoint-10"
    ck.mkdir(parents=True)
    np.save(ck / "train_perplexities.npy", np.full(4, 2.0))
    np.save(ck / "train_answer_types50_seed2.npy", np.ones((4, 50), int))  # lower priority: all wrong
    np.save(ck / "train_answer_types5_seed2_temp0.8.npy", np.zeros((4, 5), int))  # first: all right
    np.save(ck / "test_answer_types5_seed2.npy", np.array([[0, 1], [2, 0]]))
    run = released.read_run(ck.parent)
    assert run.train_acc.tolist() == [[1.0] * 4]
    assert run.test_acc.tolist() == [0.5]
    assert (run.lr, run.epochs, run.data_fraction) == (1e-05, 1, 1.0)


def make_run(tmp_path, n=4, ppl=None, answers_shape=None):
    ck = tmp_path / "run" / "checkpoint-5"
    ck.mkdir(parents=True)
    np.save(ck / "train_perplexities.npy", np.full(n, 2.0) if ppl is None else ppl)
    np.save(ck / "train_answer_types5_seed2.npy", np.zeros(answers_shape or (n, 5), int))
    np.save(ck / "test_answer_types5_seed2.npy", np.zeros((3, 5), int))
    return ck.parent


@pytest.mark.parametrize("case, match", [
    ("missing", "not found"),
    ("empty", "checkpoint-<step>"),
    ("shape", "does not match"),
    ("nonfinite", "non-finite"),
    ("nosample", "no train sample file"),
])
def test_bad_layouts_name_the_path(tmp_path, case, match):
    if case == "missing":
        path = tmp_path / "nope"
    elif case == "empty":
        (tmp_path / "run").mkdir()
        path = tmp_path / "run"
    elif case == "shape":
        path = make_run(tmp_path, answers_shape=(5, 5))
    elif case == "nonfinite":
        path = make_run(tmp_path, ppl=np.array([2.0, np.inf, 2.0, np.nan]))
    else:
        path = make_run(tmp_path)
        (path / "checkpoint-5" / "train_answer_types5_seed2.npy").unlink()
    with pytest.raises(PremError, match=match) as err:
        released.read_runs(path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_cli_fit_json_is_fast_and_complete(released_root, tmp_path):
    # CPU time of the child, not wall time: a busy machine must not fail the 5 s budget.
    with open(tmp_path / "out.json", "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "premem.cli", "fit", str(released_root), "--json"], stdout=f)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert usage.ru_utime + usage.ru_stime < 5.0
    s = json.loads((tmp_path / "out.json").read_text())
    assert {"r2", "r2_identity", "slope", "intercept", "n_points", "train_acc_r2", "runs"} <= s.keys()
    assert sum(len(r["checkpoints"]) for r in s["runs"]) == s["n_points"] == 51
    ck = s["runs"][0]["checkpoints"][0]
    assert set(ck) == {"step", "pre_mem_acc", "train_acc", "test_acc", "memorized_frac"}
    assert {"run", "lr", "epochs", "data_fraction"} <= set(s["runs"][0])


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("premem: error:") and "missing" in err and "\n" not in err
