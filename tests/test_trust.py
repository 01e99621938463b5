"""Trust: premem runs no code from a user's folder, deletes only what it made, remembers what it
measured by content, and checks every input in content before any work (one `premem: error:` line).
The tests that need a trained run (the plain Trainer door, a callback run interrupted) are in
test_own_run.py; the pickle payload test is there too."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from premem import checkpoints, encoding, io, model as model_lib, perplexity, record, record_folder, recorder
from premem import released, tasks, training
from premem import data as data_lib
from premem.config import load_params
from premem.errors import PremError
from test_bad_input import run_cli, snapshot

ROOT = Path(__file__).resolve().parents[1]
BASE = next((ROOT / "models").iterdir())
SMOKE = ROOT / "params" / "smoke.yaml"
OWN = ROOT / "params" / "own_data.yaml"


def example(i, solution=None):
    return tasks.Example(id=f"q{i}", question=f"What is {i} + 1?", solution=solution or f"{i} + 1 = {i + 1} #### {i + 1}",
                         answer=str(i + 1))


def write_rows(path, examples):
    path.write_text("".join(json.dumps(dict(id=ex.id, question=ex.question, solution=ex.solution, answer=ex.answer))
                            + "\n" for ex in examples))
    return path


# ---- premem deletes only what it made ------------------------------------------------------------

def test_force_keeps_a_users_file_beside_a_record(tmp_path):
    rec = record_folder.create(tmp_path / "rec", load_params(), command="first")
    (rec / "runs" / "lr1").mkdir(parents=True)
    (rec / "my_notes.md").write_text("mine")
    temporary = rec / f".samples.{'0' * 32}.parquet"  # a writer killed mid-write
    temporary.write_bytes(b"half")
    record_folder.create(rec, load_params(dict(k=7)), force=True)
    assert (rec / "my_notes.md").read_text() == "mine"
    assert not (rec / "runs").exists() and not temporary.exists()
    assert record.read_json(rec / "config.json")["hash"] == load_params(dict(k=7)).hash()


def test_out_an_existing_file_or_a_name_too_long_is_one_line(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    err = run_cli(["sweep", "--params", SMOKE, "--out", notes], capsys)
    assert "is a file, not a folder" in err and notes.read_text() == "mine"
    err = run_cli(["sweep", "--params", SMOKE, "--out", tmp_path / ("x" * 300)], capsys)
    assert "cannot use" in err and "File name too long" in err


def test_outputs_never_land_on_an_input_or_inside_a_record(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", [example(0)])
    cfg = data_lib.with_own_data(load_params(OWN), data)
    rec = record_folder.create(tmp_path / "rec", cfg)
    with pytest.raises(PremError, match="is a data file the record was measured on"):
        record_folder.check_output(data, cfg, rec)
    with pytest.raises(PremError, match="is inside the record"):
        record_folder.check_output(rec / "runs" / "x.csv", None)
    assert record_folder.check_output(tmp_path / "table.csv", cfg, rec) == tmp_path / "table.csv"


def test_every_top_level_entry_premem_writes_is_its_own():
    """The stages' writers (sweep, robustness, curation, notebooks) name their entries in OWN_ENTRIES:
    the names written at a record's top level in lib/premem are all there."""
    import re

    written = set()
    for f in (ROOT / "lib" / "premem").glob("*.py"):
        # record_dir / "name", Path(record_dir) / "name", out / "name": a record's top-level entries
        written |= set(re.findall(r"(?:record_dir|record|out|rec)\)?\s*/\s*\"([\w.]+)\"", f.read_text()))
    assert {"runs", "robustness", "jobs", "selections"} <= written, "the pattern no longer finds the writers"
    assert written - set(record_folder.OWN_ENTRIES) - {record_folder.LOCK} == set()


# ---- locks and temporaries -------------------------------------------------------------------------

def test_a_lock_this_process_still_holds_is_taken_over(tmp_path, capsys):
    """A callback's run stopped by Ctrl-C in a notebook keeps its lock: training again in the same
    process takes it over with a line, and does not wait on itself."""
    stopped = record_folder.locked(tmp_path / "rec", "PreMemCallback out")
    stopped.__enter__()  # never left, as after a KeyboardInterrupt
    with record_folder.locked(tmp_path / "rec", "again"):
        assert "again" in (tmp_path / "rec" / record_folder.LOCK).read_text()
    assert "taking over the lock this process still held (pid" in capsys.readouterr().err
    stopped.__exit__(None, None, None)  # the old context's exit is harmless
    assert (tmp_path / "rec" / record_folder.LOCK).read_text() == ""  # released cleanly: emptied


def test_a_dead_holders_lock_is_taken_over_and_its_temporaries_removed(tmp_path, capsys):
    folder = tmp_path / "rec"
    code = (f"import os; from premem import record_folder\nwith record_folder.locked({str(folder)!r}, 'premem sweep'):\n"
            "    os._exit(0)\n")  # ends without releasing, as kill -9 does
    subprocess.run([sys.executable, "-c", code], check=True)
    parts = folder / "runs" / "r" / "parts"
    parts.mkdir(parents=True)
    (parts / "samples-00000003.parquet").write_bytes(b"a part")
    half = parts / f".samples-00000006.{'a1' * 16}.parquet"
    half.write_bytes(b"half")
    assert list(record._inputs(folder)) == ["runs/r/parts/samples-00000003.parquet"]  # never listed
    with record_folder.locked(folder, "premem record"):
        assert not half.exists() and (parts / "samples-00000003.parquet").exists()
    err = capsys.readouterr().err
    assert "taking over the lock of pid" in err and "(premem sweep, since" in err and "ended without releasing" in err


# ---- a record remembers what it measured --------------------------------------------------------

def test_a_data_file_changed_since_it_was_recorded_is_refused(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", [example(i) for i in range(3)])
    cfg = data_lib.with_own_data(load_params(OWN), data)
    rec = record_folder.create(tmp_path / "rec", cfg)
    assert set(record.read_json(rec / "config.json")["data"]) == {"train"}
    record_folder.create(rec, cfg)  # unchanged: resumes
    write_rows(data, [example(0), example(1, "1 + 1 = 3 #### 3"), example(2)])
    with pytest.raises(PremError, match="train.jsonl changed since it was recorded"):
        record_folder.create(rec, cfg)
    record_folder.create(rec, cfg, force=True)  # afresh, with the new digest
    record_folder.create(rec, cfg)


def test_a_resumed_run_with_other_rows_under_its_ids_is_refused(tmp_path):
    rows = [example(i) for i in range(3)]
    kw = dict(lr=1e-3, epochs=2, data_fraction=1.0, seed=0)
    folder = record.start_run(tmp_path, "r", examples=rows, **kw)
    assert record.start_run(tmp_path, "r", examples=rows, **kw) == folder
    with pytest.raises(PremError, match="recorded other rows under the same ids \\(1 changed, first 'q1'\\)"):
        record.start_run(tmp_path, "r", examples=[rows[0], example(1, "1 + 1 = 3 #### 3"), rows[2]], **kw)
    info = record.read_json(folder / "run.json")
    del info["example_digests"]  # a run recorded before digests were kept resumes as it was
    io.write_json(folder / "run.json", info)
    record.start_run(tmp_path, "r", examples=[rows[0], example(1, "changed #### 2"), rows[2]], **kw)
    assert "example_digests" not in record.read_json(folder / "run.json")


# ---- inputs checked in content --------------------------------------------------------------------

def test_splits_are_kept_apart(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", [example(0)])
    with pytest.raises(PremError, match="--test .* is the training data"):
        data_lib.with_own_data(load_params(OWN), data, test=str(data))
    with pytest.raises(PremError, match="--heldout .* is the training data"):
        data_lib.with_own_data(load_params(OWN), data, heldout=str(data))
    other = tasks.Example(id="t7", question=" What is 1 + 1?", solution="#### 2", answer="2")
    with pytest.raises(PremError, match="1 held-out examples are training questions too \\(first: held-out t7 is "
                                        "training q1\\)"):
        data_lib.check_splits([example(0), example(1)], [example(5)], [other])
    data_lib.check_splits([example(0)], [example(5)], [example(6)])


def test_gold_solutions_the_checker_cannot_grade(tmp_path):
    rows = [example(0), example(1, "so the answer is 2")]  # no '#### 2': the marker checker finds nothing
    with pytest.raises(PremError, match="example q1: the 'marker' checker finds no answer in the gold solution "
                                        "\\(1 of 2 examples\\)"):
        recorder.check_gold(rows, "marker", strict=True)
    with pytest.warns(UserWarning, match="finds no answer"):
        recorder.check_gold(rows, "marker", strict=False)
    recorder.check_gold(rows, "math_verify", strict=True)  # reads the last number
    # Through a user's file: the error names its line.
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(dict(question="1+1?", solution="1 + 1 = 2", answer="2")) + "\n")
    with pytest.raises(PremError, match=f"{f}:1: the 'marker' checker finds no answer"):
        recorder.check_gold(tasks.read_jsonl(f, "train"), "marker", strict=True)


@pytest.fixture(scope="module")
def base():
    return model_lib.load_base(str(BASE))


def test_perplexity_scores_only_what_model_max_length_lets_training_see(base):
    lm, tok = base
    prompts, targets = ["What is 12 + 30?\nAnswer:"] * 2, [" 12 + 30 = 42 #### 42\nDone.", " 42"]
    full = encoding.encode_pairs(tok, prompts, targets)
    n_prompt = full[0][1]
    cut = n_prompt + 4  # within the first target, past the second
    assert len(full[0][0]) > cut >= len(full[1][0])
    nll_cut, n_cut = perplexity.target_nll(lm, tok, prompts, targets, max_length=cut, progress=False)
    nll_full, n_full = perplexity.target_nll(lm, tok, prompts, targets, progress=False)
    assert n_cut.tolist() == [4, n_full[1]] and n_full[0] == len(full[0][0]) - n_prompt
    assert nll_cut[0] < nll_full[0]  # the first four token NLLs of the first target, all positive
    np.testing.assert_allclose(nll_cut[1], nll_full[1], rtol=1e-5)  # the second whole (padding: rounding)
    # The first four tokens alone, scored as a target of their own, give the same sum.
    four = tok.decode(full[0][0][n_prompt:cut])
    alone, _ = perplexity.target_nll(lm, tok, prompts[:1], [four], add_eos=False, progress=False)
    assert encoding.encode_pairs(tok, prompts[:1], [four], add_eos=False)[0][0] == full[0][0][:cut]
    np.testing.assert_allclose(nll_cut[0], alone[0], rtol=1e-5)
    with pytest.raises(PremError, match="example 0: its prompt alone is .* tokens, and model_max_length 4"):
        encoding.encode_pairs(tok, prompts, targets, max_length=4)


def test_lengths_checked_against_the_models_context(base, capsys):
    _, tok = base
    prompts, targets = ["What is 12 + 30?\nAnswer:"], [" 12 + 30 = 42 #### 42\nDone."]
    n = len(encoding.encode_pairs(tok, prompts, targets)[0][0])
    short = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=n - 1))
    with pytest.raises(PremError, match=f"example 0 is {n} tokens, and the model's context is {n - 1}: set "
                                        "model_max_length"):
        recorder.check_lengths(load_params(), short, tok, prompts, targets)
    recorder.check_lengths(load_params(dict(model_max_length=n - 2)), short, tok, prompts, targets)
    assert "1 of 1 examples are longer than model_max_length" in capsys.readouterr().err


def test_a_sweep_checks_lengths_before_it_trains(tmp_path, capsys):
    params = tmp_path / "p.yaml"
    params.write_text(SMOKE.read_text() + f"\nmodel_max_length: 8\ncache_dir: {tmp_path / 'cache'}\n")
    err = run_cli(["sweep", "--params", params, "--out", tmp_path / "out", "--quiet"], capsys)
    assert "its prompt alone is" in err and "model_max_length 8" in err, err
    assert not list((tmp_path / "out").glob("runs/*"))  # no run trained, or even started


def test_a_boolean_subsample_mask_is_the_rows_it_marks(tmp_path):
    f = tmp_path / "subsample_idxs.npy"
    assert released.subsample_rows(np.array([True, False, True]), f).tolist() == [0, 2]
    assert released.subsample_rows(np.array([4, 1]), f).tolist() == [4, 1]
    for bad, words in ((np.array([0.5, 1.0]), "non-negative integers"), (np.array([-1, 2]), "non-negative"),
                       (np.zeros((2, 2), int), "one-dimensional")):
        with pytest.raises(PremError, match=words):
            released.subsample_rows(bad, f)


@pytest.mark.parametrize("value", ["three", True, -1, None])
def test_trainer_state_numbers_are_checked(tmp_path, value):
    (tmp_path / "trainer_state.json").write_text(json.dumps(dict(epoch=value, num_train_epochs=3)))
    assert checkpoints.state_number(tmp_path, "num_train_epochs") == 3.0
    if value is None:
        assert checkpoints.state_number(tmp_path, "epoch") is None
    else:
        with pytest.raises(PremError, match="trainer_state.json: 'epoch' must be a non-negative number"):
            checkpoints.state_number(tmp_path, "epoch")


def test_a_tau_written_out_is_the_tau_used(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("tau: -1.0\n")
    assert (load_params(f).tau_rule, load_params(f).tau) == ("fixed", -1.0)
    f.write_text("tau: -1.0\ntau_rule: heldout\n")
    assert load_params(f).tau_rule == "heldout"
    assert load_params().tau_rule == "heldout"  # the CPU default calibrates
    cfg = load_params(f)
    assert load_params(cfg.model_dump()) == cfg  # a config round-trips as it was


def test_yaml_aliases_and_huge_params_files_are_refused(tmp_path, capsys):
    bomb = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n"
    (tmp_path / "p.yaml").write_text(bomb)
    err = run_cli(["sweep", "--params", tmp_path / "p.yaml", "--out", tmp_path / "out"], capsys)
    assert "alias (*a)" in err and len(err) < 300 and not (tmp_path / "out").exists()
    (tmp_path / "p.yaml").write_text("# padding\n" * 30_000)
    err = run_cli(["sweep", "--params", tmp_path / "p.yaml", "--out", tmp_path / "out"], capsys)
    assert "a params file is a page of flat keys (at most 256 kB)" in err


def test_task_options_name_fields_as_text(tmp_path):
    f = write_rows(tmp_path / "train.jsonl", [example(0)])
    with pytest.raises(PremError, match="task_options: 'question' names a field of your rows and is text, got list"):
        tasks.read_jsonl(f, "train", question=["question"])
    assert [ex.id for ex in tasks.read_jsonl(f, "train", id=None)] == ["train-1"]


def test_local_gsm8k_files_need_its_columns(tmp_path):
    csv = tmp_path / "gsm8k.csv"
    csv.write_text("problem,solution\nWhat is 1 + 1?,#### 2\n")
    with pytest.raises(PremError, match="gsm8k: .*gsm8k.csv: row 0 has no text column 'question'"):
        tasks.load_task("gsm8k", "train", 1, data_files=dict(train=str(csv)))
    csv.write_text("question,answer\nWhat is 1 + 1?,1 + 1 = 2 #### 2\n")
    (row,) = tasks.load_task("gsm8k", "train", 1, data_files=dict(train=str(csv)))
    assert (row.question, row.answer) == ("What is 1 + 1?", "2")


# ---- models: no code runs from a folder, and the starting model is checked ----------------------

def test_remote_code_runs_only_when_the_params_say_so(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(model_type="llama", auto_map={"AutoModel": "x.Y"})))
    with pytest.raises(PremError, match="asks for code of its own \\(auto_map\\).*trust_remote_code: true"):
        model_lib.load_base(str(folder))
    assert model_lib.source(str(folder), trust_remote_code=True) == (str(folder), {})
    assert load_params(dict(trust_remote_code=True)).hash() == load_params().hash()  # the same model


def test_one_checkpoint_folder_a_step(tmp_path):
    for name in ("checkpoint-5", "checkpoint-05", "checkpoint-9"):
        (tmp_path / name).mkdir()
    with pytest.raises(PremError, match="checkpoint-05 and checkpoint-5 are both step 5: one folder a step"):
        checkpoints.saved_checkpoints(tmp_path)
    (tmp_path / "checkpoint-05").rmdir()
    assert [s for s, _ in checkpoints.checkpoint_folders(tmp_path)] == [5, 9]


def test_a_base_of_another_model_is_refused_before_any_work(tmp_path):
    base, ckpt = tmp_path / "base", tmp_path / "run" / "checkpoint-3"
    for folder, vocab in ((base, 536), (ckpt, 537)):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(dict(vocab_size=vocab, hidden_size=128, num_hidden_layers=4)))
    ckpts = [dict(kind="model", path=ckpt, step=3)]
    with pytest.raises(PremError, match="--base .*base: vocab_size 536, and checkpoint-3 has 537"):
        recorder.check_base(str(base), ckpts)
    recorder.check_base(str(base), ckpts, pad_token="add")  # training added [PAD]
    recorder.check_base(None, ckpts)


def test_finetune_leaves_another_trainers_checkpoints_alone(tmp_path, base):
    lm, tok = base
    theirs = tmp_path / "checkpoint-500"
    theirs.mkdir()
    (theirs / "model.safetensors").write_bytes(b"their weights")
    before = snapshot(tmp_path)
    with pytest.raises(PremError, match="holds checkpoints premem did not write \\(checkpoint-500"):
        training.finetune(lm, tok, ["q"], [" a"], output_dir=tmp_path, lr=1e-3, epochs=1, batch_size=1,
                          progress=False)
    assert snapshot(tmp_path) == before


def _workers_of(pid: int) -> list[int]:
    """The pool workers (spawned processes) whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmd:
            found.append(int(stat.parent.name))
    return found


def test_sigterm_ends_a_command_as_ctrl_c_does(tmp_path):
    """A scheduler's stop (SIGTERM to the command alone, as `timeout` sends it) unwinds like Ctrl-C:
    the lock is released (emptied), no temporary is left, and the command's worker processes end
    with it: none goes on training, and the runs not yet started are not started."""
    import signal
    import time

    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(yaml.safe_load(SMOKE.read_text()) | dict(workers=2, epochs=[2, 3, 4],
                                                                             cache_dir=str(tmp_path / "cache"))))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "premem", "sweep", "--params", str(params), "--out", str(out),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(out.glob("runs/*/run.json"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # until both workers are inside a run (a worker opens its run)
    assert "premem sweep" in (out / record_folder.LOCK).read_text()  # holding it
    workers = _workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(0.5)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]  # no worker left running
    assert len(list(out.glob("runs/*/done.json"))) < 6  # the pool did not run the grid to its end
    assert (out / record_folder.LOCK).read_text() == ""  # released on the way out
    assert not [p for p in out.rglob(".*") if io.is_temporary(p)]
