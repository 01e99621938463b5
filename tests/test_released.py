"""The released-logs reader and the paper's main numbers, against the authors' arrays: GSM8k and
MATH side by side in one folder, each dataset fitted on its own at its own threshold."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from premem import released
from premem.cli import main
from premem.fitting import fit_datasets, fit_summary
from premem.config import load_params
from premem.dynamics import by_dataset
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(released_root):
    return released.read_runs(released_root)


@pytest.fixture(scope="module")
def groups(runs):
    return by_dataset(runs)


def test_the_folder_holds_both_datasets(groups):
    assert list(groups) == ["gsm8k", "math"]
    assert [len(g) for g in groups.values()] == [13, 11]
    assert all(r.run.startswith(f"{name}_") for name, g in groups.items() for r in g)


def test_reference_fit_on_13_gsm8k_runs(groups):
    # Reference computed independently of this code: R² 0.939 on 51 points, 0.935 vs y = x,
    # and 0.40 for final train accuracy.
    s = fit_summary(groups["gsm8k"], tau=-2.3)
    assert s["dataset"] == "gsm8k" and s["n_runs"] == 13 and s["n_points"] == 51
    assert s["r2"] == pytest.approx(0.939, abs=0.001)
    assert s["r2_identity"] == pytest.approx(0.935, abs=0.001)
    assert s["train_acc_r2"] == pytest.approx(0.40, abs=0.005)


def reference_points(root: Path, prefix: str, tau: float):
    """(pre-mem accuracy, train accuracy, test accuracy) per checkpoint, straight from the .npy
    files with plain loops: the paper's definition, independent of premem's reader and metrics."""
    points = []
    for run in sorted(d for d in root.iterdir() if d.name.startswith(prefix)):
        rows = np.load(run / "subsample_idxs.npy") if "full" not in run.name else None
        ckpts = sorted(run.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[1]))
        best = None
        for ck in ckpts:
            def first(split):
                return next(np.load(ck / f"{split}_answer_{s}.npy") for s in released.SAMPLE_PRIORITY
                            if (ck / f"{split}_answer_{s}.npy").exists())
            acc = (first("train") == 0).mean(axis=1)
            ppl = np.load(ck / "train_perplexities.npy")
            if rows is not None:
                acc, ppl = acc[rows], ppl[rows]
            unmemorized = np.log(np.log(ppl)) >= tau
            best = np.maximum(best, acc * unmemorized) if best is not None else acc * unmemorized
            points.append((np.minimum(best, acc).mean(), acc.mean(), (first("test") == 0).mean()))
    return np.array(points)


def r2(x, y):
    return np.corrcoef(x, y)[0, 1] ** 2  # R² of a one-predictor OLS fit


def test_math_fit_at_the_authors_threshold(groups, released_root):
    s = fit_summary(groups["math"], tau=-1.7)
    assert s["dataset"] == "math" and s["n_runs"] == 11 and s["n_points"] == 42
    ref = reference_points(released_root, "math_", -1.7)
    assert len(ref) == 42
    assert s["r2"] == pytest.approx(r2(ref[:, 0], ref[:, 2]), abs=1e-9)
    assert s["train_acc_r2"] == pytest.approx(r2(ref[:, 1], ref[:, 2]), abs=1e-9)
    # The value that independent computation gives: claim 1 holds on MATH too, train accuracy says nothing.
    assert s["r2"] == pytest.approx(0.950, abs=0.001) and s["train_acc_r2"] < 0.01


def test_gsm8k_reference_from_the_raw_arrays(groups, released_root):
    ref = reference_points(released_root, "gsm8k_", -2.3)
    assert fit_summary(groups["gsm8k"], tau=-2.3)["r2"] == pytest.approx(r2(ref[:, 0], ref[:, 2]), abs=1e-9)


def test_a_fit_never_mixes_datasets(runs, released_root):
    with pytest.raises(PremError, match="2 datasets"):
        fit_summary(runs, tau=-2.3)
    # The whole folder: one fit per dataset, each at the authors' own threshold.
    fits = fit_datasets(released_root)
    assert [(f["dataset"], f["tau"], f["n_points"]) for f in fits] == [("gsm8k", -2.3, 51), ("math", -1.7, 42)]
    assert all(f["tau_from"] == "the authors' threshold for Llama3-8B" for f in fits)
    assert fits[0]["r2"] == pytest.approx(0.939, abs=0.001) and fits[1]["r2"] == pytest.approx(0.950, abs=0.001)
    # Overrides: one for every dataset, or by name (which wins).
    over = fit_datasets(released_root, {"math": -2.0}, -2.5)
    assert [f["tau"] for f in over] == [-2.5, -2.0] and {f["tau_from"] for f in over} == {"given"}
    only = fit_datasets(released_root, datasets=["math"])
    assert len(only) == 1 and only[0]["n_points"] == 42
    with pytest.raises(PremError, match="no runs of dataset 'gsm9k'; datasets here: gsm8k, math"):
        fit_datasets(released_root, datasets=["gsm9k"])
    with pytest.raises(PremError, match="--tau for dataset 'gsm9k'"):
        fit_datasets(released_root, {"gsm9k": -2.0})


def test_run_layout_is_read_as_released(groups, released_root):
    by_name = {r.run: r for g in groups.values() for r in g}
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
    math_quarter = by_name["math_orig_12epochs_quarter_lr2e-05_bs24"]
    assert math_quarter.dataset == "math" and math_quarter.n_examples == 1875
    assert math_quarter.epoch_of_step.tolist() == [2, 4, 6, 8, 10, 12]
    assert by_name["math_orig_6epochs_full_lr5e-05_bs24"].n_examples == 7500


def link_runs(root: Path, target: Path, names: list[str]) -> Path:
    target.mkdir()
    for name in names:
        (target / name).symlink_to(root / name)
    return target


def test_mixed_folder_groups_by_prefix_and_folder(released_root, tmp_path):
    folder = link_runs(released_root, tmp_path / "mine", [
        "gsm8k_orig_3epochs_full_lr2e-05_bs128", "gsm8k_orig_6epochs_full_lr2e-05_bs128",
        "gsm8k_orig_6epochs_full_lr5e-07_bs128", "math_orig_3epochs_full_lr5e-05_bs24",
        "math_orig_6epochs_full_lr5e-05_bs24"])
    # A run whose name does not say its dataset: grouped under the folder that holds it.
    (folder / "my_run").symlink_to(released_root / "math_orig_6epochs_full_lr5e-07_bs24")
    groups = by_dataset(released.read_runs(folder))
    assert {k: [r.run for r in g] for k, g in groups.items()} == {
        "gsm8k": ["gsm8k_orig_3epochs_full_lr2e-05_bs128", "gsm8k_orig_6epochs_full_lr2e-05_bs128",
                  "gsm8k_orig_6epochs_full_lr5e-07_bs128"],
        "math": ["math_orig_3epochs_full_lr5e-05_bs24", "math_orig_6epochs_full_lr5e-05_bs24"],
        "mine": ["my_run"]}
    # That group has no threshold of the authors': premem asks for one instead of guessing.
    with pytest.raises(PremError, match="no memorization threshold for dataset 'mine'"):
        fit_datasets(folder)
    fits = fit_datasets(folder, {"mine": -1.7})
    assert [(f["dataset"], f["n_points"]) for f in fits] == [("gsm8k", 15), ("math", 9), ("mine", 6)]
    alone = fit_summary(released.read_runs(released_root / "math_orig_6epochs_full_lr5e-07_bs24"), -1.7)
    assert fits[2]["runs"][0]["checkpoints"] == alone["runs"][0]["checkpoints"]
    # A folder that is itself one run is its own group, named by its folder.
    assert released.read_runs(folder / "my_run")[0].dataset == "my_run"


def test_notebook_params_hold_the_authors_thresholds():
    cfg = load_params(ROOT / "params" / "released_llama3-8b.yaml")
    assert cfg.released_taus == released.AUTHORS_TAU and cfg.released_datasets == ["gsm8k", "math"]
    for dataset, tau in released.AUTHORS_TAU.items():
        assert load_params(ROOT / "params" / f"llama3-8b_{dataset}.yaml").tau == tau


def test_read_datasets_selects_and_checks_taus(released_root):
    runs, taus = released.read_datasets(released_root, ["math"], {"math": -2.0})
    assert {r.dataset for r in runs} == {"math"} and taus == {"math": -2.0}
    runs, taus = released.read_datasets(released_root)
    assert taus == released.AUTHORS_TAU and len(runs) == 24
    with pytest.raises(PremError, match="released_taus: no runs of dataset 'maths'"):
        released.read_datasets(released_root, taus={"maths": -1.7})


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
    assert (run.lr, run.epochs, run.data_fraction, run.dataset) == (1e-05, 1, 1.0, "gsm8k")


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
    fits = [json.loads(line) for line in (tmp_path / "out.json").read_text().splitlines()]  # one per dataset
    assert [(s["dataset"], s["tau"], s["n_points"]) for s in fits] == [("gsm8k", -2.3, 51), ("math", -1.7, 42)]
    for s in fits:
        assert {"r2", "r2_identity", "slope", "intercept", "n_points", "train_acc_r2", "runs", "tau_from"} <= s.keys()
        assert sum(len(r["checkpoints"]) for r in s["runs"]) == s["n_points"]
        assert all(r["run"].startswith(s["dataset"] + "_") for r in s["runs"])
    ck = fits[0]["runs"][0]["checkpoints"][0]
    assert set(ck) == {"step", "pre_mem_acc", "train_acc", "test_acc", "memorized_frac"}
    assert {"run", "lr", "epochs", "data_fraction"} <= set(fits[0]["runs"][0])


def test_cli_fit_prints_a_block_per_dataset(released_root, capsys):
    assert main(["fit", str(released_root)]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("== ")]
    assert heads == ["== gsm8k: 13 runs, 51 checkpoints; tau -2.3 (the authors' threshold for Llama3-8B)",
                     "== math: 11 runs, 42 checkpoints; tau -1.7 (the authors' threshold for Llama3-8B)"]
    assert "gsm8k, tau -2.3: test ~ pre-mem accuracy over 51 checkpoints: R² 0.939" in out
    assert "math, tau -1.7: test ~ pre-mem accuracy over 42 checkpoints: R² 0.950" in out
    assert main(["fit", str(released_root), "--dataset", "math", "--tau", "math=-1.7"]) == 0
    out = capsys.readouterr().out
    assert "== math: 11 runs, 42 checkpoints; tau -1.7 (given)" in out and "gsm8k" not in out


@pytest.mark.parametrize("argv, words", [
    (["fit", "MISSING"], ["runs folder not found", "missing"]),
    (["fit", "RELEASED", "--tau", "nan"], ["--tau", "'nan'", "finite"]),
    (["fit", "RELEASED", "--tau", "gsm8k=minus"], ["--tau", "'gsm8k=minus'", "NAME=T"]),
    (["fit", "RELEASED", "--tau", "-2", "--tau", "-1"], ["--tau given 2 times"]),
    (["fit", "RELEASED", "--dataset", "maths"], ["no runs of dataset 'maths'", "gsm8k, math"]),
    (["fit"], ["fit:", "path"]),
])
def test_cli_errors_are_one_line(released_root, tmp_path, capsys, argv, words):
    argv = [str(tmp_path / "missing") if a == "MISSING" else str(released_root) if a == "RELEASED" else a
            for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and captured.out == ""
    assert err.startswith("premem: error:") and "\n" not in err
    assert all(w in err for w in words), err
