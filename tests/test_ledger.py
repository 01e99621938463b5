"""premem.claims and premem.ledger: the verdict rules on hand-made tables, the claims computed from
records without running a notebook, the README refresh, and the stored notebooks' outputs."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from premem import claims, ledger, metrics, record
from premem.config import NOTEBOOK_PARAMS, SWITCH, load_params
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]


def fits(pm, tr, tau):
    return pd.DataFrame(dict(predictor=["pre_mem_acc", "train_acc"], r2=[pm, tr], n_points=[36, 36], tau=tau))


def efficiency(**cols):
    return pd.DataFrame(dict(n_seeds=3, **cols))


def test_claim_1_rule_and_cells():
    short, detail, verdict = claims.judge_predicts(fits(.78, .22, -2.57))
    assert short == "R² 0.78 vs train accuracy 0.22" and verdict == "partly"  # 0.78 < 0.9
    assert detail == "R² 0.780 vs train accuracy 0.220 (36 checkpoints, tau -2.57)"
    assert claims.judge_predicts(fits(.91, .2, -1.0))[2] == "yes"
    assert claims.judge_predicts(fits(.91, .7, -1.0))[2] == "partly"  # train accuracy within 0.3
    assert claims.judge_predicts(fits(.5, .7, -1.0))[2] == "no"
    assert claims.judge_predicts(fits(.5, .7, -1.0), "tau -1.00, fixed")[1].endswith("(36 checkpoints, tau -1.00, fixed)")


def test_threshold_rule_reads_the_chosen_tau_on_the_grid():
    curve = pd.DataFrame(dict(tau=[-2.8, -2.57, -2.43], r2=[.5, .78, .83]))
    short, detail, verdict = claims.judge_threshold(curve, -2.57, "tau -2.57, held-out 0.05 quantile")
    assert verdict == "yes" and short == "tau -2.57, held-out 0.05 quantile: R² 0.78; grid's best 0.83"  # 0.78 >= 0.9 * 0.83
    assert detail.endswith("best on the grid, which uses test labels: tau -2.43, R² 0.83")
    assert claims.judge_threshold(curve, -2.8, "x")[2] == "no"  # 0.5 < 0.9 * 0.83


def test_claim_2_ranks_every_predictor():
    short, detail, verdict = claims.judge_ranking(pd.DataFrame(dict(predictor=["atc", "pre_mem_acc", "train_acc"],
                                                                     r2=[.6, .78, .22])))
    assert (short, verdict) == ("pre-mem R² 0.78, 1st of 3; next: atc 0.60", "yes")
    assert detail == "R²: pre_mem_acc 0.78 > atc 0.60 > train_acc 0.22"
    short, _, verdict = claims.judge_ranking(pd.DataFrame(dict(predictor=["atc", "pre_mem_acc"], r2=[.9, .8])))
    assert (short, verdict) == ("pre-mem R² 0.80, 2nd of 2; best: atc 0.90", "no")


def test_claim_3_needs_every_perturbation_above_zero():
    rhos = pd.DataFrame(dict(perturbation=["first", "first", "problem", "problem"], by=["pre_mem_acc", "train_acc"] * 2,
                             rho=[.33, .51, .13, .12], ci_low=[.16, .39, -.05, -.05], ci_high=[.48, .62, .3, .3]))
    short, detail, verdict = claims.judge_robustness(rhos)
    assert verdict == "partly"  # "problem": CI crosses 0
    assert short == "Spearman 0.13 to 0.33 over 2 perturbations, 1 above 0; train accuracy 0.12 to 0.51"
    assert detail.startswith('"first": Spearman 0.33 [0.16, 0.48] vs train accuracy 0.51; "problem"')
    rhos.loc[2, "ci_low"] = .01
    assert claims.judge_robustness(rhos)[2] == "partly"  # both above 0, but "first" below train accuracy's CI
    rhos.loc[1, "ci_low"] = .3
    assert claims.judge_robustness(rhos)[2] == "yes"


def test_claim_4_reads_the_last_round_and_the_rivals():
    df = efficiency(strategy=["premem", "premem"], round=[1, 2], ratio=[1.2, 1.6], ratio_lo=[.9, 1.1], ratio_hi=[1.5, 2.2])
    short, detail, verdict = claims.judge_efficiency(df)
    assert verdict == "yes" and short == "premem 1.20x, 1.60x at rounds 1, 2 (3 seeds)"
    assert detail == "premem round 1: 1.20x [0.90, 1.50]; premem round 2: 1.60x [1.10, 2.20] (3 seeds)"
    assert claims.judge_efficiency(efficiency(strategy=["premem"], round=[1], ratio=[.8], ratio_lo=[.5],
                                              ratio_hi=[1.1]))[2] == "no"
    # 1.6x with its CI above 1, but IFD did better in the same round: not "yes".
    df = efficiency(strategy=["premem", "ifd", "premem", "ifd"], round=[1, 1, 2, 2], ratio=[1.2, 1.0, 1.6, 1.8],
                    ratio_lo=[.9, .7, 1.1, 1.2], ratio_hi=[1.5, 1.3, 2.2, 2.5])
    short, detail, verdict = claims.judge_efficiency(df)
    assert verdict == "partly" and detail.startswith("ifd round 1: 1.00x [0.70, 1.30]; premem round 1")
    assert short.endswith("; best other at round 2: ifd 1.80x")
    # Above every i.i.d. run: an infinite ratio, said as such, and still "yes" when its CI is above 1.
    short, detail, verdict = claims.judge_efficiency(efficiency(strategy=["premem"], round=[2], ratio=[np.inf],
                                                                ratio_lo=[1.3], ratio_hi=[np.inf]))
    assert verdict == "yes" and detail == "premem round 2: ∞x [1.30, ∞] (3 seeds; ∞: more accurate than every i.i.d. run)"


def test_claim_4_says_the_iid_curve_the_base_and_the_paired_gaps():
    table = pd.DataFrame(dict(strategy=["iid"] * 4 + ["premem"], n_examples=[128, 128, 192, 384, 192],
                              test_acc=[.2, .3, .26, .3, .9]))
    assert claims.scaling(table, .2049) == ("i.i.d. test accuracy 0.25 (128), 0.26 (192), 0.30 (384); "
                                            "base model, not finetuned, 0.20")
    gaps = pd.DataFrame(dict(reference="premem", strategy=["iid", "iid", "ifd", "most_steps", "most_steps", "ifd"],
                             round=[2, 1, 1, 1, 2, 2], n_examples=0, gap=[.04, .02, .1, -.01, .03, .05],
                             gap_lo=[.01, -.01, .0, -.03, .0, .02], gap_hi=[.07, .05, .2, .01, .06, .08],
                             wins=[3, 2, 3, 1, 2, 3], n_seeds=3))
    # iid by round; the rival is the smallest gap at the last round (round 1's -0.01 is not the last)
    assert claims.gaps_said(gaps) == ("premem minus iid test accuracy, paired by seed: round 1 +0.020 [-0.010, +0.050], "
                                      "2/3 seeds; round 2 +0.040 [+0.010, +0.070], 3/3 seeds; minus its closest rival "
                                      "at round 2 (most_steps): +0.030 [+0.000, +0.060], 2/3 seeds")


def test_threshold_is_data():
    t = metrics.Threshold(-1.96, "heldout", 0.05, 2304)
    assert t.columns() == dict(tau=-1.96, tau_rule="heldout", tau_quantile=0.05)
    assert t.short == "tau -1.96, held-out 0.05 quantile" and "(2304 values); no test labels used" in str(t)
    assert metrics.Threshold(-2.3, "fixed").short == "tau -2.30, fixed"


def test_claims_on_a_record_without_any_notebook(tmp_path, smoke_sweep):
    """Every live claim from a smoke sweep's record, and the ledger from records alone: a claim whose
    record or cache is missing says which command makes it; a claim never computes."""
    import shutil

    shared, made = smoke_sweep
    cfg = load_params(ROOT / "params/smoke.yaml", out_dir=str(tmp_path), workers=1, cache_dir=shared.cache_dir)
    missing, _ = ledger.build(None, cfg)
    assert missing.live.iloc[:4].str.startswith("(no record at").all() and (missing["verdict (live)"] == "").all()
    assert "premem sweep" in missing.live.iloc[0] and missing.live.iloc[4].startswith("(no finished curation at")
    assert "premem curate --params" in missing.live.iloc[4]  # a command that exists:
    from premem.cli import build_parser

    assert build_parser().parse_args(["curate", "--params", "p.yaml"]).func.__name__ == "cmd_curate"
    with pytest.raises(claims.Missing, match="premem sweep"):
        claims.open_sweep(cfg)
    assert cfg.hash() == shared.hash()  # the same record: copied in, as `premem sweep` would have made it
    shutil.copytree(made, record.default_dir(cfg), ignore=shutil.ignore_patterns("robustness"))
    s = claims.open_sweep(cfg)
    c1 = claims.predicts_test(s)
    # The claim's fit is the plain OLS of test accuracy on pre-mem accuracy over every checkpoint.
    table = c1.tables["checkpoints"]
    fit = metrics.fit_predictor(table.pre_mem_acc, table.test_acc)
    assert c1.tables["fits"].set_index("predictor").r2["pre_mem_acc"] == pytest.approx(fit.r2)
    assert len(table) == sum(len(r.steps) for r in s.runs) and c1.source == f"smoke @ {cfg.hash()}"
    assert c1.tables["fits"].tau_rule.iloc[0] == "heldout" and c1.tables["fits"].tau.iloc[0] == s.tau
    assert claims.threshold(s).tables["r2_by_tau"].tau.isin([s.tau]).any()
    with pytest.raises(claims.Missing, match="premem perturb"):
        claims.flags_fragile(s)
    built, made = ledger.build(None, cfg)
    assert built.live.iloc[0] == c1.ours and built["verdict (live)"].iloc[0] == c1.verdict
    assert built.live.iloc[3].startswith("(robustness of run") and built.live.iloc[4].startswith("(no finished curation")
    assert built["released logs"].iloc[0] == "(released logs not read)"
    assert "live, smoke @" in ledger.details(made) and c1.detail in ledger.details(made)
    assert "| claim | paper | ours | verdict |" in c1._repr_markdown_()


def test_a_notebook_on_a_finished_record_runs_no_stage_and_imports_no_torch(tmp_path, smoke_sweep):
    """notebooks.open_record reads a finished sweep without importing the sweep (torch, transformers:
    seconds a notebook kernel would pay), and sweeps when a run of the grid is unfinished."""
    import shutil
    import subprocess
    import sys

    import yaml

    from premem import shipped

    shared, made = smoke_sweep
    cfg = load_params(ROOT / "params/smoke.yaml", out_dir=str(tmp_path), workers=1, cache_dir=shared.cache_dir)
    assert not shipped.swept(cfg)
    shutil.copytree(made, record.default_dir(cfg), ignore=shutil.ignore_patterns("robustness"))
    assert shipped.swept(cfg)
    params = tmp_path / "smoke.yaml"
    params.write_text(yaml.safe_dump(yaml.safe_load((ROOT / "params/smoke.yaml").read_text())
                                     | dict(out_dir=str(tmp_path), workers=1, cache_dir=shared.cache_dir)))
    code = ("import sys; from premem import notebooks; s = notebooks.open_record({}); "
            "print('torch' in sys.modules, len(s.runs))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, SWITCH: str(params)}, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    assert out == f"False {len(record.read_runs(made))}"
    run = next(d for d in (record.default_dir(cfg) / "runs").iterdir() if d.is_dir())
    (run / "done.json").unlink()
    assert not shipped.swept(cfg)  # an unfinished run: the setup sweeps (resuming), as before


def test_a_curation_is_finished_for_the_rules_and_seeds_the_params_name(tmp_path):
    from premem import notebooks
    from premem.curation_efficiency import folder_of

    cfg = load_params(ROOT / "params/smoke.yaml", out_dir=str(tmp_path))
    folder = folder_of(cfg)
    assert not notebooks.is_curated(cfg)
    folder.mkdir(parents=True)
    chains = [(s, seed) for s in cfg.curation_strategies for seed in cfg.curation_seeds]
    pd.DataFrame(dict(strategy=[c[0] for c in chains], seed=[c[1] for c in chains])).to_parquet(
        folder / "curation.parquet")
    assert not notebooks.is_curated(cfg)  # no efficiency table: the curation did not finish
    pd.DataFrame(dict(strategy=["premem"])).to_parquet(folder / "efficiency.parquet")
    assert notebooks.is_curated(cfg)
    more = cfg.model_copy(update=dict(curation_seeds=[*cfg.curation_seeds, 99]))
    assert folder_of(more) == folder and not notebooks.is_curated(more)  # a seed added: curate it


def test_a_claim_registered_in_one_place_reaches_the_ledger(tmp_path, smoke_sweep, monkeypatch):
    import shutil

    shared, made = smoke_sweep
    cfg = load_params(ROOT / "params/smoke.yaml", out_dir=str(tmp_path), workers=1, cache_dir=shared.cache_dir)
    shutil.copytree(made, record.default_dir(cfg), ignore=shutil.ignore_patterns("robustness"))

    def runs_counted(params, s):
        return claims.Claim("n", f"{len(s.runs)} runs", "every run of the record", "yes", s.source)

    monkeypatch.setitem(claims.CLAIMS, "n", claims.ClaimSpec("n. a claim of one's own", "the paper's number",
                                                             live=runs_counted))
    built, _ = ledger.build(None, cfg)
    row = built.set_index("claim").loc["n. a claim of one's own"]
    n_runs = len(record.read_runs(made))
    assert (row.paper, row.live, row["verdict (live)"], row["released logs"]) == (
        "the paper's number", f"{n_runs} runs", "yes", ledger.NOT_IN_LOGS)
    assert built.claim.tolist()[:-1] == [spec.statement for key, spec in claims.CLAIMS.items() if key != "n"]
    assert f"| n. a claim of one's own | the paper's number | {ledger.NOT_IN_LOGS} | {n_runs} runs | yes |" in \
        ledger.render(built)


def test_released_logs_claim(released_root):
    cfg = load_params(ROOT / "params/released_llama3-8b.yaml", released_logs=str(released_root))
    c = claims.released_logs(cfg)
    assert c.ours == "gsm8k: R² 0.94 vs train accuracy 0.40; math: R² 0.95 vs train accuracy 0.01"
    assert c.verdict == "yes" and c.tables["fits"].dataset.unique().tolist() == ["gsm8k", "math"]
    assert "gsm8k: R² 0.939 vs train accuracy 0.398 (51 checkpoints, tau -2.30)" in c.detail


def test_readme_block_is_replaced_between_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{ledger.BEGIN}\nold | table\n{ledger.END}\noutro\n")
    table = ledger.render(pd.DataFrame([["1. x", "p", "r", "l", "yes", "s"]], columns=ledger.COLUMNS))
    assert table.count("\n") == 3 and table.startswith("| claim | paper |")
    assert ledger.update_readme(readme, table) and not ledger.update_readme(readme, table)
    assert readme.read_text() == f"intro\n{ledger.BEGIN}\n{table}{ledger.END}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(PremError, match="ledger markers"):
        ledger.update_readme(readme, table)


def test_readme_shows_the_generated_ledger():
    """The README's ledger is figures/claims.md's table, not a hand-typed one."""
    text = (ROOT / "README.md").read_text()
    block = text.split(ledger.BEGIN, 1)[1].split(ledger.END, 1)[0].lstrip("\n")
    assert block and block in (ROOT / "figures" / "claims.md").read_text()


def test_reproduce_runs_one_notebook_and_writes_its_ledger(tmp_path, monkeypatch):
    """`premem reproduce --params params/smoke.yaml --only 03`: executed copies, summary rows, and
    the smoke ledger in smoke's figures folder; the README (the CPU default's ledger) is untouched.
    A params file outside the project (a user's own) works too, here for notebook 04."""
    import shutil

    from premem.reproduce import reproduce

    readme = (ROOT / "README.md").read_text()
    with pytest.raises(PremError, match="no notebook numbered 99"):
        reproduce(params="params/smoke.yaml", only=["99"], progress=False)
    # Two notebooks at once never move this process's working directory (papermill's `cwd` did, and
    # threads overlapping left it in notebooks/): the kernels start in their folder by themselves.
    moved = []
    monkeypatch.setattr(os, "chdir", lambda path, chdir=os.chdir: (moved.append(path), chdir(path))[1])
    here = Path.cwd()
    summary = reproduce(params="params/smoke.yaml", only=["04", "03"], progress=False)
    assert Path.cwd() == here and {str(p) for p in moved} <= {str(here)}  # papermill restores what it found
    # The sweep runs first as a stage of its own (cached here), then the notebooks (two at a time,
    # their rows in their order), then the wall clock of it all.
    assert summary.stage.tolist() == ["sweep", "03_premem_predicts_test.ipynb", "04_threshold.ipynb", "total (wall)"]
    assert summary.params.tolist()[:3] == ["params/smoke.yaml"] * 3
    assert summary.seconds.iloc[-1] >= summary.seconds.iloc[0] + summary.seconds.iloc[1:3].max()
    own = shutil.copy(ROOT / "params/smoke.yaml", tmp_path / "mine.yaml")
    mine = reproduce(params=own, only=["04"], progress=False)
    assert mine.stage.tolist()[1] == "04_threshold.ipynb" and mine.params.tolist()[:2] == [str(own)] * 2
    summary = pd.concat([summary.iloc[1:2], mine.iloc[1:2]])
    assert (summary.seconds > 0).all() and all((ROOT / e).is_file() for e in summary.executed)
    text = (load_params(ROOT / "params/smoke.yaml").path("figures_dir") / "claims.md").read_text()
    assert re.search(r"\| tau without test labels \| tau set per model and task \| [^|]+ \| tau -?\d", text)
    assert (ROOT / "README.md").read_text() == readme


def test_stored_notebooks_hold_the_default_run_and_the_switch_has_references():
    """Each notebook opens on the CPU default's outputs (the claim's row and its figures, no run
    metadata, no progress bars); every checked cell has smoke's output for nbval under the switch."""
    import nbformat

    from premem import reproduce

    for book in reproduce.numbered_notebooks(ROOT):
        nb = nbformat.read(book, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count == i for i, c in enumerate(nb.cells, start=1) if c.cell_type == "code"), book.name
        assert "papermill" not in nb.metadata and not any("papermill" in c.metadata for c in nb.cells)
        assert not [o for c in code for o in c.outputs if o.get("name") == "stderr"], book.name
        assert not [o for c in code for o in c.outputs if reproduce.WIDGET in o.get("data", {})], book.name
        assert "widgets" not in nb.metadata, book.name  # a widget's state a stored notebook cannot replay
        images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, f"{book.name} shows no figure"
        if book.name[:2] != "02":  # 02 is no claim of its own
            assert any("| claim | paper | ours | verdict |" in o.get("data", {}).get("text/markdown", "")
                       for c in code for o in c.outputs), f"{book.name} shows no ledger row"
        if book.name[:2] not in NOTEBOOK_PARAMS:
            assert f"{load_params(ROOT / 'params/tiny.yaml').name}:" in "".join(
                o.get("text", "") for c in code for o in c.outputs) or book.name[:2] == "07", book.name
        refs = json.loads((ROOT / reproduce.REFERENCES / "smoke" / f"{book.stem}.json").read_text())
        assert set(refs) == set(reproduce.checked_outputs(nb)), book.name
        texts = "".join(str(o.get("text", "")) + "".join(str(v) for k, v in o.get("data", {}).items()
                                                         if k.startswith("text/")) for c in code for o in c.outputs)
        machine = re.findall(r"(?:/work|/home|/root|/tmp|/Users|/private)/[^\s'\"]*", texts)
        assert not machine, f"{book.name} prints paths of the machine that stored it: {machine[:2]}"


def test_stored_notebooks_drop_progress_bars_as_text_and_as_widgets():
    """Progress bars (stderr text, or tqdm widgets under ipywidgets) and widget state leave a stored
    notebook; what a cell printed or displayed stays."""
    import nbformat

    from premem import reproduce

    nb = nbformat.v4.new_notebook(metadata={"widgets": {"state": {"m": {}}}})
    bar = {"model_id": "m", "version_major": 2, "version_minor": 0}
    cell = nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="100%|##########| 3/3"),
        nbformat.v4.new_output("display_data", data={reproduce.WIDGET: bar, "text/plain": "  0%|"}),
        nbformat.v4.new_output("stream", name="stdout", text="tiny: 12 runs\n"),
        nbformat.v4.new_output("display_data", data={"text/markdown": "| claim |"})])
    nb.cells.append(cell)
    reproduce.strip_run_metadata(nb)
    assert [o.get("text") or o["data"].get("text/markdown") for o in cell.outputs] == ["tiny: 12 runs\n", "| claim |"]
    assert "widgets" not in nb.metadata and cell.execution_count == 1


def test_the_switch_swaps_in_the_references(monkeypatch, tmp_path):
    import nbformat

    from premem import reproduce

    class IPyNbCell:  # what nbval's items carry that use_references reads
        def __init__(self, fspath, cell):
            self.fspath, self.cell = fspath, cell

    book = ROOT / "notebooks" / "03_premem_predicts_test.ipynb"
    nb = nbformat.read(book, as_version=4)
    items = [IPyNbCell(book, c) for c in nb.cells if c.cell_type == "code"]
    stored = {c.id: c.outputs for c in nb.cells if c.cell_type == "code"}
    checked = [i for i in items if i.cell.source.startswith(reproduce.CHECK_MARK)]
    monkeypatch.setenv(SWITCH, "params/tiny.yaml")  # the default: the stored outputs stand
    reproduce.use_references(items, ROOT)
    assert all(i.cell.outputs == stored[i.cell.id] for i in items)
    monkeypatch.setenv(SWITCH, "params/smoke.yaml")
    reproduce.use_references(items, ROOT)
    refs = json.loads((ROOT / reproduce.REFERENCES / "smoke" / f"{book.stem}.json").read_text())
    assert checked and all(i.cell.outputs == refs[i.cell.id] for i in checked)
    assert all(i.cell.outputs == stored[i.cell.id] for i in items if i not in checked)
    # A params file with no references: the cell's expected output says which command makes them.
    other = tmp_path / "other.yaml"
    other.write_text((ROOT / "params/smoke.yaml").read_text().replace("name: smoke", "name: other"))
    monkeypatch.setenv(SWITCH, str(other))
    reproduce.use_references(items, ROOT)
    assert "premem reproduce --params" in checked[0].cell.outputs[0].text
