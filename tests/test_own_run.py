"""Bring your own run: a user's own data (jsonl task), their own Trainer with PreMemCallback, TRL's
SFTTrainer, `premem record` on the checkpoints any trainer saved (full models and LoRA adapters),
`premem examples`, and records that are damaged or were never premem's.

The model is the shipped CPU base (~1M parameters, pretrained on arith) finetuned by the plain
transformers Trainer on 12 arith problems written as a user's JSON Lines with their own column names.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from premem import checkpoints, encoding, metrics, record, record_folder, record_schema, tasks, trainer_args, training
from premem.cli import main
from premem.config import load_params
from premem.errors import PremError
from tiny_lm import single_thread

ROOT = Path(__file__).resolve().parents[1]
BASE = next((ROOT / "models").iterdir())  # the shipped CPU default's base
FIELDS = dict(question="problem", solution="reasoning", answer="final", id="uid")
TABLES = ("samples", "perplexity", "checkpoints", "runs")


def write_jsonl(path, examples, prefix):
    rows = [json.dumps({"uid": f"{prefix}{i}", "problem": ex.question, "reasoning": ex.solution,
                        "final": ex.answer, "extra": i}) for i, ex in enumerate(examples)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's files: train/test/held-out JSON Lines in their own columns, and a params file."""
    tmp = tmp_path_factory.mktemp("user")
    pool = tasks.load_task("arith", "train", 16, seed=3)
    files = dict(train=write_jsonl(tmp / "train.jsonl", pool[:12], "q"),
                 test=write_jsonl(tmp / "test.jsonl", tasks.load_task("arith", "test", 8, seed=3), "t"),
                 heldout=write_jsonl(tmp / "held.jsonl", pool[12:], "h"))
    # The template (docs/own_run.md) with the user's column names, and smoke-sized decoding.
    template = yaml.safe_load((ROOT / "params" / "own_data.yaml").read_text())
    params = tmp / "mine.yaml"
    params.write_text(yaml.safe_dump(template | dict(name="mine", task_options=dict(FIELDS, checker="marker"), k=2,
                                                     k_test=2, max_new_tokens=96, batch_size=4, tau=-1.5,
                                                     out_dir=str(tmp / "runs"))))
    return dict(tmp=tmp, params=params, **files)


def logs_callback():
    """A stand-in for a reporting integration (tensorboard, wandb): it keeps what on_log receives."""
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    return Keep()


def train_hf(out_dir, user, *, callback: dict | None = None, lora: bool = False, epochs: int = 3):
    """The user's own script: the plain transformers Trainer on their data, optionally with
    PreMemCallback (keyword arguments `callback`); returns (trainer, logs)."""
    trainer, logs = hf_trainer(out_dir, user, callback=callback, lora=lora, epochs=epochs)
    with torch.random.fork_rng(), single_thread():
        trainer.train()
    return trainer, logs


def hf_trainer(out_dir, user, *, callback: dict | None = None, lora: bool = False, epochs: int = 3):
    """train_hf's Trainer (and its logs callback), not yet trained."""
    from transformers import Trainer, TrainingArguments

    from premem import PreMemCallback, model as model_lib

    torch.manual_seed(0)
    lm, tok = model_lib.load_base(str(BASE))
    if lora:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear"))
    rows = [json.loads(line) for line in Path(user["train"]).read_text().splitlines()]
    features = encoding.build_features(tok, [r["problem"] + "\nAnswer:" for r in rows],
                                       [" " + r["reasoning"] + "\nDone." for r in rows])
    args = TrainingArguments(output_dir=str(out_dir), num_train_epochs=epochs, per_device_train_batch_size=4,
                             learning_rate=3e-3, save_strategy="epoch", logging_strategy="epoch", report_to="none",
                             seed=7, use_cpu=True, disable_tqdm=True, warmup_steps=0)
    trainer = Trainer(model=lm, args=args, train_dataset=encoding.ListDataset(features),
                      data_collator=encoding.CompletionCollator(tok.pad_token_id), processing_class=tok)
    logs = logs_callback()
    trainer.add_callback(logs)
    if callback is not None:
        trainer.add_callback(PreMemCallback(trainer, user["train"], params=user["params"], test=user["test"],
                                            heldout=user["heldout"], **callback))
    return trainer, logs


@pytest.fixture(scope="module")
def hf_run(user):
    """A full-finetuning run with the callback, recording every save into its own record."""
    out = user["tmp"] / "hf"
    trainer, logs = train_hf(out, user, callback=dict(out=user["tmp"] / "rec_cb"))
    return dict(out=out, record=user["tmp"] / "rec_cb", logs=logs.logs, trainer=trainer)


def tables(folder):
    return {t: pd.read_parquet(Path(folder) / f"{t}.parquet") for t in TABLES}


def test_callback_records_every_save_and_logs_through_the_trainer(hf_run, user):
    rec = tables(hf_run["record"])
    runs = rec["runs"].set_index("run")
    assert list(runs.index) == ["hf"]  # named by the Trainer's output_dir
    assert runs.loc["hf", ["lr", "epochs", "seed", "n_train"]].tolist() == [3e-3, 3, 7, 12]
    steps = sorted(rec["samples"].step.unique())
    assert steps == [3, 6, 9]  # the Trainer's saves: 12 examples / batch 4 = 3 steps per epoch
    assert sorted(p.name for p in hf_run["out"].iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-3", "checkpoint-6", "checkpoint-9"]
    s = rec["samples"]
    # k = 2 answers per training and test question at each checkpoint, under the user's own ids.
    assert (s[s.split == "train"].groupby("step").size() == 12 * 2).all()
    assert (s[s.split == "test"].groupby("step").size() == 8 * 2).all()
    assert set(s[s.split == "train"].example_id) == {f"q{i}" for i in range(12)}
    p = rec["perplexity"]
    assert set(p[~p.trained].example_id) == {f"h{i}" for i in range(4)}
    # Logged through the Trainer's loggers at every save, with the interval of the estimate.
    logged = [entry for entry in hf_run["logs"] if "premem/pre_mem_acc" in entry]
    assert len(logged) == 3
    dyn = record.read_runs(hf_run["record"])[0]
    want = metrics.dataset_mean(metrics.pre_mem_acc(dyn.train_acc, dyn.perplexity, -1.5))
    np.testing.assert_allclose([e["premem/pre_mem_acc"] for e in logged], want)
    np.testing.assert_allclose([e["premem/train_acc"] for e in logged], dyn.mean_train_acc())
    np.testing.assert_allclose([e["premem/test_acc"] for e in logged], dyn.test_acc)
    # Every training example recorded: a census, so the interval has no width.
    assert all(e["premem/pre_mem_acc_lo"] == pytest.approx(e["premem/pre_mem_acc"]) for e in logged)
    assert {e["premem/n_recorded"] for e in logged} == {12}


def test_recording_leaves_training_as_it_was(hf_run, user):
    """The callback samples between optimiser steps; the RNG streams are restored, so the weights
    equal a run without it."""
    from safetensors.torch import load_file

    train_hf(user["tmp"] / "plain", user)
    a = load_file(hf_run["out"] / "checkpoint-9" / "model.safetensors")
    b = load_file(user["tmp"] / "plain" / "checkpoint-9" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_premem_record_on_saved_checkpoints_equals_the_callback(hf_run, user, capsys):
    out = user["tmp"] / "rec_cli"
    argv = ["record", str(hf_run["out"]), "--data", str(user["train"]), "--test", str(user["test"]),
            "--heldout", str(user["heldout"]), "--params", str(user["params"]), "--out", str(out), "--quiet"]
    with single_thread():
        assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    got, want = tables(out), tables(hf_run["record"])
    for t in TABLES:
        pd.testing.assert_frame_equal(got[t], want[t], check_exact=True, obj=t)
    # Resumable per checkpoint: a rerun records nothing; a deleted checkpoint's parts are redone.
    parts = sorted((out / "runs" / "hf" / "parts").iterdir())
    before = {p: p.stat().st_mtime_ns for p in parts}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in parts} == before
    for p in parts:
        if "-00000006" in p.name:
            p.unlink()
    with single_thread():
        assert main(argv[:-1] + ["--checkpoints", "6", "--quiet"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "samples.parquet"), want["samples"])
    # The fit and the threshold rules read it like any record.
    capsys.readouterr()
    assert main(["fit", str(out), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert (fit["dataset"], fit["tau"], fit["n_points"]) == ("jsonl", -1.5, 3)
    assert main(["fit", str(out), "--json", "--tau-rule", "heldout", "--tau-quantile", "0.5"]) == 0
    held = record.read_runs(out)[0].heldout_perplexity
    assert json.loads(capsys.readouterr().out)["tau"] == pytest.approx(metrics.calibrate_tau([held], 0.5))


def test_the_callback_refuses_fsdp(user):
    from types import SimpleNamespace

    from premem.callback import PreMemCallback

    with pytest.raises(PremError, match="PreMemCallback: under FSDP .* `premem record` instead"):
        PreMemCallback(SimpleNamespace(is_fsdp_enabled=True), user["train"], params=user["params"])


def test_notebook_reads_a_record_of_your_own_runs(hf_run, user):
    """`papermill notebooks/03_premem_predicts_test.ipynb out.ipynb -p record_dir runs/mine`: claim 1's
    notebook on runs premem did not train (recorded by premem record), figures into the record."""
    import papermill

    out = user["tmp"] / "rec_three"
    for epochs in (1, 2):
        train_hf(user["tmp"] / f"ep{epochs}", user, epochs=epochs)
    with single_thread():
        for run in (hf_run["out"], user["tmp"] / "ep1", user["tmp"] / "ep2"):
            assert main(["record", str(run), "--data", str(user["train"]), "--test", str(user["test"]),
                         "--params", str(user["params"]), "--out", str(out), "--quiet"]) == 0
    assert sorted(record.read_runs(out), key=lambda r: r.run)[0].run == "ep1"
    papermill.execute_notebook(str(ROOT / "notebooks" / "03_premem_predicts_test.ipynb"), str(user["tmp"] / "nb.ipynb"),
                               parameters=dict(record_dir=str(out)), cwd=str(ROOT / "notebooks"), progress_bar=False)
    assert (out / "figures" / "03_premem_vs_test.png").is_file()
    fits = pd.read_parquet(out / "results" / "03_premem_predicts_test" / "mine" / "fits.parquet")
    assert fits.n_points.max() == 3 + 1 + 2 and set(fits.dataset) == {"jsonl"}


def test_callback_on_a_subsample_reports_its_interval(user):
    trainer, logs = train_hf(user["tmp"] / "sub", user, epochs=2,
                             callback=dict(out=user["tmp"] / "rec_sub", fraction=0.5, every_epochs=1))
    logged = [e for e in logs.logs if "premem/pre_mem_acc" in e]
    assert len(logged) == 2 and {e["premem/n_recorded"] for e in logged} == {6}
    dyn = record.read_runs(user["tmp"] / "rec_sub")[0]
    assert dyn.n_examples == 6 and record.run_info(user["tmp"] / "rec_sub", "sub")["n_train"] == 12
    per_example = metrics.pre_mem_acc(dyn.train_acc, dyn.perplexity, -1.5)[-1]
    # The t interval of 6 of 12 examples, with the finite population correction sqrt((12-6)/(12-1)).
    half = 2.5706 * per_example.std(ddof=1) / np.sqrt(6) * np.sqrt(6 / 11)
    assert logged[-1]["premem/pre_mem_acc_lo"] == pytest.approx(per_example.mean() - half, abs=1e-3)
    assert logged[-1]["premem/pre_mem_acc_hi"] == pytest.approx(per_example.mean() + half, abs=1e-3)


def test_trl_sft_trainer_with_the_callback(user):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from premem import PreMemCallback, model as model_lib

    lm, tok = model_lib.load_base(str(BASE))
    rows = [json.loads(line) for line in Path(user["train"]).read_text().splitlines()]
    data = Dataset.from_list([dict(prompt=r["problem"] + "\nAnswer:", completion=" " + r["reasoning"] + "\nDone.")
                              for r in rows])
    args = SFTConfig(output_dir=str(user["tmp"] / "sft"), num_train_epochs=3, per_device_train_batch_size=4,
                     learning_rate=3e-3, save_strategy="epoch", logging_strategy="epoch", report_to="none", seed=7,
                     use_cpu=True, disable_tqdm=True, max_length=512)
    trainer = SFTTrainer(model=lm, args=args, train_dataset=data, processing_class=tok)
    trainer.add_callback(PreMemCallback(trainer, user["train"], params=user["params"], test=user["test"],
                                        out=user["tmp"] / "rec_sft"))
    with single_thread():
        trainer.train()
    rec = tables(user["tmp"] / "rec_sft")
    assert sorted(rec["samples"].step.unique()) == [3, 6, 9]
    assert rec["runs"].run.tolist() == ["sft"] and rec["runs"].n_train.tolist() == [12]
    assert (rec["perplexity"].groupby("step").size() == 12).all()  # no held-out file given
    assert any("premem/pre_mem_acc" in h for h in trainer.state.log_history)


def test_lora_run_recorded_from_its_adapters(user):
    """LoRA adapters saved by the Trainer: `premem record` puts each on the base its
    adapter_config names and gives the callback's tables, gradient variance included."""
    out = user["tmp"] / "lora"
    train_hf(out, user, lora=True, epochs=2, callback=dict(out=user["tmp"] / "rec_lora_cb", baselines=True))
    assert (out / "checkpoint-6" / "adapter_config.json").is_file()
    with single_thread():
        assert main(["record", str(out), "--data", str(user["train"]), "--test", str(user["test"]),
                     "--heldout", str(user["heldout"]), "--params", str(user["params"]),
                     "--out", str(user["tmp"] / "rec_lora"), "--baselines", "--quiet"]) == 0
    got, want = tables(user["tmp"] / "rec_lora"), tables(user["tmp"] / "rec_lora_cb")
    for t in ("samples", "perplexity"):
        pd.testing.assert_frame_equal(got[t], want[t], check_exact=True, obj=t)
    np.testing.assert_allclose(got["checkpoints"].grad_variance, want["checkpoints"].grad_variance, rtol=1e-6)
    assert want["checkpoints"].param_distance.gt(0).all()  # the callback saw the adapters' starting weights
    assert got["checkpoints"].param_distance.isna().all()  # premem record did not: NaN, not a guess


def test_premem_examples_and_the_rows_algorithm_1_would_collect(hf_run, user, capsys):
    table_file = user["tmp"] / "examples.csv"
    assert main(["examples", str(hf_run["record"]), "--out", str(table_file)]) == 0
    table = pd.read_csv(table_file)
    assert len(table) == 12 and set(table.example_id) == {f"q{i}" for i in range(12)}
    assert list(table.columns) == ["run", "dataset", "example_id", "pre_mem_acc", "train_acc", "perplexity",
                                   "first_memorized_epoch", "first_memorized_step", "tau"]
    dyn = record.read_runs(hf_run["record"])[0]
    mem = metrics.memorized(dyn.perplexity, -1.5)
    for row in table.itertuples():
        col = list(dyn.example_ids).index(row.example_id)
        hits = np.flatnonzero(mem[:, col])
        assert (np.isnan(row.first_memorized_step) if not hits.size else row.first_memorized_step == dyn.steps[hits[0]])
    below = user["tmp"] / "collect.jsonl"
    threshold = float(np.median(table.pre_mem_acc))
    assert main(["examples", str(hf_run["record"]), "--out", str(below), "--below", str(threshold)]) == 0
    picked = {r for r in table.example_id[table.pre_mem_acc <= threshold]}
    lines = below.read_text().splitlines()
    own = {json.loads(line)["uid"]: line for line in Path(user["train"]).read_text().splitlines()}
    assert {json.loads(line)["uid"] for line in lines} == picked and all(own[json.loads(x)["uid"]] == x for x in lines)
    for fmt in ("parquet", "jsonl"):
        assert main(["examples", str(hf_run["record"]), "--out", str(user["tmp"] / f"e.{fmt}")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(user["tmp"] / "e.parquet"), table, check_dtype=False)
    assert len(pd.read_json(user["tmp"] / "e.jsonl", lines=True)) == 12


# ---- bad input: one line naming the file, key or value --------------------------------------------

@pytest.mark.parametrize("line, words", [
    ("{not json", ["not valid JSON"]),
    ("[1, 2]", ["expected a JSON object"]),
    ('{"uid": "x", "reasoning": "#### 3", "final": "3"}', ["field 'problem'", "question", "missing"]),
    ('{"uid": "x", "problem": "q", "reasoning": "", "final": "3"}', ["field 'reasoning'", "solution"]),
    ('{"uid": "x", "problem": "q", "reasoning": "no marker here"}', ["no field 'final'", "'marker' checker"]),
    ('{"problem": "q", "reasoning": "#### 3", "final": "3"}', ["field 'uid'", "id"]),
    ('{"uid": "q0", "problem": "q", "reasoning": "#### 3", "final": "3"}', ["id 'q0' already used on line 1"]),
])
def test_bad_rows_name_file_line_and_field(user, tmp_path, line, words):
    bad = tmp_path / "bad.jsonl"
    first = Path(user["train"]).read_text().splitlines()[0]
    bad.write_text(first + "\n" + line + "\n")
    with pytest.raises(PremError) as err:
        tasks.read_jsonl(bad, "train", **FIELDS)
    msg = str(err.value)
    assert msg.startswith(f"{bad}:2:") and all(w in msg for w in words), msg


def test_jsonl_defaults_and_checkers(tmp_path):
    f = tmp_path / "plain.jsonl"
    f.write_text(json.dumps(dict(question="1+1?", solution="We add: \\boxed{2}")) + "\n\n" +
                 json.dumps(dict(question="2+2?", solution="so \\boxed{4}", answer="4")) + "\n")
    rows = tasks.read_jsonl(f, "train", checker="boxed")
    assert [(r.id, r.answer, r.meta["line"]) for r in rows] == [("train-1", "2", 1), ("train-3", "4", 3)]
    from premem import grading

    assert [grading.grade("... \\boxed{\\frac{4}{2}}", "2", c).correct for c in ("boxed", "marker")] == [True, False]
    assert grading.grade("x #### 2.0", "2", "strict").correct and not grading.grade("x #### 4/2", "2", "strict").correct
    assert grading.grade("x #### 4/2", "2", "marker").correct  # math-verify: the same number
    assert grading.grade("  Paris ", "Paris", "exact").correct and not grading.grade("Paris.", "Paris", "exact").correct
    assert grading.grade("so it is 12 apples", "12", "math_verify").correct
    with pytest.raises(PremError, match="unknown answer checker 'boxd'"):
        tasks.read_jsonl(f, "train", checker="boxd")


@pytest.mark.parametrize("damage, words", [
    ("no_runs_table", ["runs.parquet", "missing"]),
    ("truncated", ["samples.parquet", "not a readable parquet table"]),
    ("foreign", ["perplexity.parquet", "missing columns", "nll"]),
    ("wrong_kind", ["samples.parquet", "column 'correct'", "expected bool"]),
    ("no_config", ["no config.json"]),
    ("bad_config", ["config.json", "not valid JSON"]),
])
def test_damaged_records_are_one_line(hf_run, tmp_path, capsys, damage, words):
    folder = tmp_path / "rec"
    shutil.copytree(hf_run["record"], folder)
    if damage == "no_runs_table":
        (folder / "runs.parquet").unlink()
    elif damage == "truncated":
        data = (folder / "samples.parquet").read_bytes()
        (folder / "samples.parquet").write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        pd.read_parquet(folder / "perplexity.parquet").rename(columns={"nll": "loss"}).to_parquet(
            folder / "perplexity.parquet")
    elif damage == "wrong_kind":
        s = pd.read_parquet(folder / "samples.parquet")
        s.assign(correct=s.correct.map({True: "yes", False: "no"})).to_parquet(folder / "samples.parquet")
    elif damage == "no_config":
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text('{"hash": "abc", ')
    assert main(["fit", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("premem: error:") and "\n" not in err and all(w in err for w in words), err


def test_saved_checkpoint_folders_are_checked_before_any_work(hf_run, tmp_path):
    assert [c["step"] for c in checkpoints.saved_checkpoints(hf_run["out"], "4-9")] == [6, 9]
    assert [c["kind"] for c in checkpoints.saved_checkpoints(hf_run["out"], "3,9")] == ["model", "model"]
    with pytest.raises(PremError, match="no checkpoint at step \\[5\\]; saved steps: 3, 6, 9"):
        checkpoints.saved_checkpoints(hf_run["out"], "3,5")
    with pytest.raises(PremError, match="not 'all', a list of steps"):
        checkpoints.saved_checkpoints(hf_run["out"], "three")
    odd = tmp_path / "odd" / "checkpoint-1"
    odd.mkdir(parents=True)
    (odd / "notes.txt").write_text("not a model")
    with pytest.raises(PremError, match="checkpoint-1: neither a model .* nor a LoRA adapter"):
        checkpoints.saved_checkpoints(odd.parent)
    with pytest.raises(PremError, match="no checkpoint-<step> folders"):
        checkpoints.saved_checkpoints(tmp_path)


def test_force_deletes_only_a_record(tmp_path):

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    for force in (False, True):  # a record goes into a new or empty folder, or a record, never elsewhere
        with pytest.raises(PremError, match="notes holds files that are not a premem record \\(thesis.tex\\)"):
            record_folder.create(notes, load_params(), force=force)
    assert (notes / "thesis.tex").read_text() == "years of work"
    rec = record_folder.create(tmp_path / "rec", load_params(), command="first")
    record_folder.create(rec, load_params(), command="again")
    provenance = record.read_json(rec / "config.json")["provenance"]
    assert [p["command"] for p in provenance] == ["first", "again"] and "torch" in provenance[0]["versions"]
    record_folder.create(rec, load_params(dict(k=7)), force=True)
    assert len(record.read_json(rec / "config.json")["provenance"]) == 1


def test_docs_document_the_record_schema():
    assert record_schema.schema_markdown() in (ROOT / "docs" / "record.md").read_text()


def test_another_run_of_the_same_name_is_refused_not_merged(hf_run, user, tmp_path, capsys):
    rec = tmp_path / "rec"
    shutil.copytree(hf_run["record"], rec)
    elsewhere = tmp_path / "elsewhere" / "hf"  # another experiment's output_dir, the same basename
    shutil.copytree(hf_run["out"], elsewhere)
    before = {p: p.read_bytes() for p in rec.rglob("*") if p.is_file() and p.name != ".lock"}
    code = main(["record", str(elsewhere), "--data", str(user["train"]), "--test", str(user["test"]),
                 "--heldout", str(user["heldout"]), "--params", str(user["params"]), "--out", str(rec), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "run hf holds checkpoints from elsewhere" in err and "--run" in err, err
    after = {p: p.read_bytes() for p in rec.rglob("*") if p.is_file() and p.name != ".lock"}
    assert {p: b for p, b in after.items() if p.name != "config.json"} == \
        {p: b for p, b in before.items() if p.name != "config.json"}
    for bad in ("exp/1", "..", "lr[2e-5]"):
        with pytest.raises(PremError, match="cannot name a folder of the record"):
            record.check_run_name(bad)


def test_parts_recorded_after_the_tables_are_read(hf_run, tmp_path):
    """Tables that do not hold every part (a finish killed, a writer stopped before it) are not
    taken for the record: it is read from its parts."""
    rec = tmp_path / "rec"
    shutil.copytree(hf_run["record"], rec)
    folder = rec / "runs" / "hf"
    for table in record_schema.TABLES:
        part = pd.read_parquet(record.part_path(folder, table, 9))
        record.write_part(folder, table, 12, part.assign(step=12))
    assert list(record.read_runs(rec)[0].steps) == [3, 6, 9, 12]
    record.finish(rec)
    assert list(record.read_runs(rec)[0].steps) == [3, 6, 9, 12]
    assert sorted(pd.read_parquet(rec / "samples.parquet").step.unique()) == [3, 6, 9, 12]


def test_tau_rules_on_the_released_logs(released_root):
    from premem.fitting import fit_datasets

    assert [f["tau"] for f in fit_datasets(released_root, rule="fixed")] == [-2.3, -1.7]
    with pytest.raises(PremError, match="no held-out examples"):
        fit_datasets(released_root, rule="heldout")


class _Payload:
    """What a hostile training_args.bin could hold: unpickling it would write a file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path(self.target).write_text, ("the pickle ran",))


def test_training_args_bin_is_never_unpickled_bare(tmp_path):
    """A checkpoint's training_args.bin is read through torch's weights-only unpickler with an
    allowlist of TrainingArguments' classes: a payload in it does not run, and the run's lr and seed
    are left empty with a warning; a real Trainer's file still reads."""
    from transformers import TrainingArguments

    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    torch.save(_Payload(tmp_path / "pwned"), ckpt / "training_args.bin")
    with pytest.warns(UserWarning, match="training_args.bin: not read"):
        assert trainer_args.training_arguments(ckpt) == dict(lr=None, epochs=None, seed=0)
    assert not (tmp_path / "pwned").exists()
    torch.save(TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-3, seed=7, num_train_epochs=2,
                                 report_to="none", use_cpu=True), ckpt / "training_args.bin")
    assert trainer_args.training_arguments(ckpt) == dict(lr=3e-3, epochs=2, seed=7)


# ---- trust: the plain Trainer door, interrupted runs, rows edited after recording -----------------

def test_a_callback_run_interrupted_and_trained_again_finishes(hf_run, user):
    """Ctrl-C in a notebook (KeyboardInterrupt from inside training) leaves the callback's lock held
    by this process: training again (resumed from the last save) takes it back and finishes."""
    from transformers import TrainerCallback

    class CtrlC(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 6 and not hasattr(self, "done"):
                self.done = True
                raise KeyboardInterrupt

    out, rec = user["tmp"] / "hf_stopped", user["tmp"] / "rec_stopped"
    trainer, _ = hf_trainer(out, user, callback=dict(out=rec))
    trainer.add_callback(CtrlC())  # after PreMemCallback: step 6 is recorded, then the run stops
    with torch.random.fork_rng(), single_thread():
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
        assert "hf_stopped" in (rec / record_folder.LOCK).read_text()  # still held: nothing released it
        trainer.train(resume_from_checkpoint=True)
    assert (rec / record_folder.LOCK).read_text() == ""  # released at the end
    got, want = tables(rec)["samples"], tables(hf_run["record"])["samples"]
    assert sorted(got.step.unique()) == [3, 6, 9] and (got[got.split == "train"].groupby("step").size() == 24).all()
    before = got[got.step < 9].drop(columns="run").reset_index(drop=True)  # trained alike before the stop
    pd.testing.assert_frame_equal(before, want[want.step < 9].drop(columns="run").reset_index(drop=True))


def test_the_callback_keeps_its_record_apart_from_the_checkpoints(user):
    from types import SimpleNamespace

    from premem.callback import PreMemCallback

    trainer = SimpleNamespace(args=SimpleNamespace(output_dir=str(user["tmp"] / "ckpts"), save_strategy="epoch",
                                                   world_size=1))
    for out in (user["tmp"] / "ckpts", user["tmp"] / "ckpts" / "record", user["tmp"]):
        with pytest.raises(PremError, match="the record and the Trainer's output_dir .* must be apart"):
            PreMemCallback(trainer, user["train"], params=user["params"], out=out)


def test_checkpoints_without_a_tokenizer_take_the_base_models(hf_run, user, tmp_path, capsys, monkeypatch):
    """A Trainer given no processing_class saves no tokenizer files: `premem record` takes the
    tokenizer of the model training started from (--base or the params' base_model), with the
    params' pad token, and records what the callback recorded."""
    from premem import model as model_lib

    plain = tmp_path / "plain"
    shutil.copytree(hf_run["out"] / "checkpoint-9", plain / "checkpoint-9")
    for name in model_lib.TOKENIZER_FILES + ("special_tokens_map.json", "chat_template.jinja"):
        (plain / "checkpoint-9" / name).unlink(missing_ok=True)
    assert not model_lib.has_tokenizer(plain / "checkpoint-9")
    argv = ["record", str(plain), "--data", str(user["train"]), "--test", str(user["test"]), "--heldout",
            str(user["heldout"]), "--params", str(user["params"]), "--out", str(tmp_path / "rec"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds no tokenizer" in err and "--base" in err and "\n" not in err.strip()
    loads = []
    real = training.load_checkpoint
    monkeypatch.setattr(training, "load_checkpoint", lambda *a, **k: loads.append(k) or real(*a, **k))
    with single_thread():
        assert main(argv + ["--base", str(BASE)]) == 0
    assert [(k["tokenizer"], k["pad_token"], k["trust_remote_code"]) for k in loads] == [
        (str(BASE), load_params(user["params"]).pad_token, False)]
    got, want = tables(tmp_path / "rec")["samples"], tables(hf_run["record"])["samples"]
    pd.testing.assert_frame_equal(got.drop(columns="run").reset_index(drop=True),
                                  want[want.step == 9].drop(columns="run").reset_index(drop=True))


def test_below_writes_only_rows_as_they_were_measured(hf_run, user, tmp_path, capsys):
    rec, data = tmp_path / "rec", tmp_path / "train.jsonl"
    shutil.copytree(hf_run["record"], rec)
    lines = Path(user["train"]).read_text().splitlines()
    edited = json.loads(lines[0]) | dict(reasoning="edited after recording #### 1")
    data.write_text("\n".join([json.dumps(edited)] + lines[1:]) + "\n")
    config = record.read_json(rec / "config.json")
    config["params"]["data_files"]["train"] = str(data)  # the record of a file edited since
    (rec / "config.json").write_text(json.dumps(config))
    below = tmp_path / "below.jsonl"
    assert main(["examples", str(rec), "--out", str(below), "--below", "1.0"]) == 0
    assert "1 of the 12 rows picked are not in" in capsys.readouterr().err
    assert below.read_text().splitlines() == lines[1:]
    assert main(["examples", str(rec), "--out", str(data), "--below", "1.0"]) == 2  # never over its input
    assert "is a data file the record was measured on" in capsys.readouterr().err
