"""premem.ledger: claims read from saved result tables, verdict rules, README refresh."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from premem import ledger
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]


def save(results, notebook, name, table, df):
    folder = results / notebook / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(hash="abc123", params={})))
    df.to_parquet(folder / f"{table}.parquet")


def fits(pm, tr, tau, rule="rule"):
    return pd.DataFrame(dict(predictor=["pre_mem_acc", "train_acc"], r2=[pm, tr], n_points=[36, 36], tau=tau,
                             tau_rule=rule))


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    save(r, "01_released_logs", "rel", "fits", pd.concat([fits(.939, .398, -2.3).assign(dataset="gsm8k"),
                                                          fits(.95, .005, -1.7).assign(dataset="math")]))
    save(r, "03_premem_predicts_test", "live", "fits", fits(.78, .22, -2.57, "tau = -2.57, the held-out rule; no labels"))
    save(r, "04_threshold", "live", "r2_by_tau", pd.DataFrame(dict(tau=[-2.8, -2.57, -2.43], r2=[.5, .78, .83])))
    save(r, "05_predictors", "live", "predictors",
         pd.DataFrame(dict(predictor=["atc", "pre_mem_acc", "train_acc"], r2=[.6, .78, .22])))
    save(r, "06_robustness", "live", "spearman", pd.DataFrame(dict(
        perturbation=["first", "first", "problem", "problem"], by=["pre_mem_acc", "train_acc"] * 2,
        rho=[.33, .51, .13, .12], ci_low=[.16, .39, -.05, -.05], ci_high=[.48, .62, .3, .3])))
    save(r, "07_data_curation", "live", "efficiency", pd.DataFrame(dict(
        strategy=["premem", "premem"], round=[1, 2], ratio=[1.2, 1.6], ratio_lo=[.9, 1.1], ratio_hi=[1.5, 2.2],
        n_seeds=[3, 3])))
    return r


def test_ledger_reads_each_claim_and_applies_the_rules(results):
    led = ledger.build(results, released="rel", live="live").set_index("claim")
    assert list(led.columns) == ledger.COLUMNS[1:] and len(led) == 5
    c1 = led.iloc[0]
    assert c1["released logs"] == ("gsm8k: R² 0.939 vs train accuracy 0.398 (36 checkpoints, tau -2.30); "
                                   "math: R² 0.950 vs train accuracy 0.005 (36 checkpoints, tau -1.70)")
    assert led.iloc[1]["released logs"] == "the authors' tau: gsm8k -2.3; math -1.7"
    assert c1.live == "R² 0.78 vs train accuracy 0.22 (36 checkpoints, tau -2.57)"
    assert c1["verdict (live)"] == "partly" and c1.params == "live @ abc123"  # 0.78 < 0.9
    assert led.iloc[1]["verdict (live)"] == "yes"  # 0.78 >= 0.9 * 0.83
    assert led.iloc[1].live.startswith("tau -2.57 (the held-out rule): R² 0.78; best on the grid")
    assert led.iloc[2].live == "R²: pre_mem_acc 0.78 > atc 0.60 > train_acc 0.22"
    assert led.iloc[2]["verdict (live)"] == "yes" and led.iloc[2]["released logs"] == ledger.NOT_IN_LOGS
    assert led.iloc[3]["verdict (live)"] == "partly"  # "problem": CI crosses 0
    assert led.iloc[4]["verdict (live)"] == "yes"  # the last round: 1.6x, CI above 1
    assert "premem round 1: 1.20x [0.90, 1.50]" in led.iloc[4].live and led.iloc[4].live.endswith("(3 seeds)")


def test_claim_4_shows_the_iid_curve_and_the_base_model(results):
    save(results, "07_data_curation", "live", "curation", pd.DataFrame(dict(
        strategy=["iid"] * 4 + ["premem"], n_examples=[128, 128, 192, 384, 192], test_acc=[.2, .3, .26, .3, .9])))
    save(results, "07_data_curation", "live", "base", pd.DataFrame(dict(test_acc=[.2049])))
    live = ledger.build(results, "rel", "live").iloc[4].live
    assert live.endswith("(3 seeds); i.i.d. test accuracy 0.25 (128), 0.26 (192), 0.30 (384); "
                         "base model, not finetuned, 0.20")
    save(results, "07_data_curation", "live", "gaps", pd.DataFrame(dict(
        reference="premem", strategy=["iid", "iid", "ifd", "most_steps", "most_steps", "ifd"], round=[2, 1, 1, 1, 2, 2],
        n_examples=0, gap=[.04, .02, .1, -.01, .03, .05], gap_lo=[.01, -.01, .0, -.03, .0, .02],
        gap_hi=[.07, .05, .2, .01, .06, .08], wins=[3, 2, 3, 1, 2, 3], n_seeds=3)))
    live = ledger.build(results, "rel", "live").iloc[4].live
    # iid by round; the rival is the smallest gap at the last round (round 1's -0.01 is not the last)
    assert live.endswith("base model, not finetuned, 0.20; premem minus iid test accuracy, paired by seed: "
                         "round 1 +0.020 [-0.010, +0.050], 2/3 seeds; round 2 +0.040 [+0.010, +0.070], 3/3 seeds; "
                         "minus its closest rival at round 2 (most_steps): +0.030 [+0.000, +0.060], 2/3 seeds")


def test_verdicts_turn_with_the_numbers(results):
    save(results, "03_premem_predicts_test", "live", "fits", fits(.91, .2, -1.0))
    save(results, "05_predictors", "live", "predictors", pd.DataFrame(dict(predictor=["atc", "pre_mem_acc"],
                                                                           r2=[.9, .8])))
    save(results, "07_data_curation", "live", "efficiency", pd.DataFrame(dict(
        strategy=["premem"], round=[1], ratio=[.8], ratio_lo=[.5], ratio_hi=[1.1], n_seeds=[3])))
    verdicts = ledger.build(results, "rel", "live")["verdict (live)"].tolist()
    assert verdicts[0] == "yes" and verdicts[2] == "no" and verdicts[4] == "no"
    # 1.6x with its CI above 1, but IFD did better in the same round: not "yes".
    save(results, "07_data_curation", "live", "efficiency", pd.DataFrame(dict(
        strategy=["premem", "ifd", "premem", "ifd"], round=[1, 1, 2, 2], ratio=[1.2, 1.0, 1.6, 1.8],
        ratio_lo=[.9, .7, 1.1, 1.2], ratio_hi=[1.5, 1.3, 2.2, 2.5], n_seeds=3)))
    led = ledger.build(results, "rel", "live").iloc[4]
    assert led["verdict (live)"] == "partly" and led.live.startswith("ifd round 1: 1.00x [0.70, 1.30]; premem round 1")
    # Above every i.i.d. run: an infinite ratio, said as such, and still "yes" when its CI is above 1.
    save(results, "07_data_curation", "live", "efficiency", pd.DataFrame(dict(
        strategy=["premem"], round=[2], ratio=[np.inf], ratio_lo=[1.3], ratio_hi=[np.inf], n_seeds=3)))
    led = ledger.build(results, "rel", "live").iloc[4]
    assert led["verdict (live)"] == "yes"
    assert led.live.startswith("premem round 2: ∞x [1.30, ∞] (3 seeds; ∞: more accurate than every i.i.d. run)")


def test_missing_notebooks_are_named(tmp_path):
    (tmp_path / "results").mkdir()
    led = ledger.build(tmp_path / "results", "rel", "live")
    assert led.live.tolist()[0] == "(notebook 03 not run)" and led.live.tolist()[4] == "(notebook 07 not run)"
    with pytest.raises(PremError, match="no results folder"):
        ledger.build(tmp_path / "nothing")


def test_readme_block_is_replaced_between_markers_only(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{ledger.BEGIN}\nold | table\n{ledger.END}\noutro\n")
    table = ledger.render(ledger.build(results, "rel", "live"))
    assert table.count("\n") == 7 and table.startswith("| claim | paper |")
    assert ledger.update_readme(readme, table) and not ledger.update_readme(readme, table)
    assert readme.read_text() == f"intro\n{ledger.BEGIN}\n{table}{ledger.END}\noutro\n"
    out = ledger.write(results, tmp_path / "figs", readme, released="rel", live="live")
    assert out.read_text().endswith(table)
    readme.write_text("no markers")
    with pytest.raises(PremError, match="ledger markers"):
        ledger.update_readme(readme, table)


def test_readme_shows_the_generated_ledger():
    """The README's ledger is figures/claims.md's table, not a hand-typed one."""
    text = (ROOT / "README.md").read_text()
    block = text.split(ledger.BEGIN, 1)[1].split(ledger.END, 1)[0].lstrip("\n")
    assert block and (ROOT / "figures" / "claims.md").read_text().endswith(block)


def test_reproduce_runs_one_notebook_and_writes_its_ledger(tmp_path):
    """`premem reproduce --params params/smoke.yaml --only 03 04`: executed copies, summary rows, and
    the smoke ledger in smoke's figures folder; the README (the CPU default's ledger) is untouched.
    A params file outside the project (a user's own) works too."""
    import shutil

    from premem.config import load_params
    from premem.notebooks import reproduce

    readme = (ROOT / "README.md").read_text()
    with pytest.raises(PremError, match="no notebook numbered 99"):
        reproduce(params="params/smoke.yaml", only=["99"], progress=False)
    summary = reproduce(params="params/smoke.yaml", only=["03", "04"], progress=False)
    # The sweep runs first as a stage of its own (cached here), then the notebooks, then the total.
    assert summary.stage.tolist() == ["sweep", "03_premem_predicts_test.ipynb", "04_threshold.ipynb", "total"]
    assert summary.params.tolist()[:3] == ["params/smoke.yaml"] * 3
    assert summary.seconds.iloc[-1] == pytest.approx(summary.seconds.iloc[:3].sum(), abs=0.2)
    summary = summary.iloc[1:3]
    own = shutil.copy(ROOT / "params/smoke.yaml", tmp_path / "mine.yaml")
    assert reproduce(params=own, only=["04"], progress=False).params.tolist()[:2] == [str(own)] * 2
    assert (summary.seconds > 0).all() and all((ROOT / e).is_file() for e in summary.executed)
    claims = (load_params(ROOT / "params/smoke.yaml").path("figures_dir") / "claims.md").read_text()
    # The released-logs cell depends on whether notebook 01 ran here; the live one is notebook 04's.
    assert re.search(r"\| tau without test labels \| tau set per model and task \| [^|]+ \| tau -?\d", claims)
    assert (ROOT / "README.md").read_text() == readme


def test_stored_notebooks_keep_only_checked_stdout_and_no_run_metadata():
    import nbformat

    from premem.notebooks import strip_outputs

    run = {"papermill": {"duration": 0.1, "status": "completed"}}
    md = nbformat.v4.new_markdown_cell("# title", metadata=dict(run))
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", metadata=dict(run), execution_count=7, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="1\n"),
        nbformat.v4.new_output("display_data", data={"image/png": "AAAA"})])
    other = nbformat.v4.new_code_cell("x = 1", execution_count=8,
                                      outputs=[nbformat.v4.new_output("stream", name="stdout", text="x\n")])
    nb = nbformat.v4.new_notebook(cells=[md, checked, other], metadata=dict(run))
    strip_outputs(nb)
    assert all("papermill" not in c.metadata for c in nb.cells) and "papermill" not in nb.metadata
    assert [o.output_type for o in checked.outputs] == ["stream"] and checked.outputs[0].text == "1\n"
    assert checked.execution_count == 2 and other.execution_count is None and other.outputs == []
