"""Nothing lost, nothing silently wrong: each bad input is one `premem: error: ...` line with exit 2,
written before any work and with every file that was there left as it was; damaged records are
repaired or refused; writers killed mid-write leave the old file."""
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from premem import record
from premem.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


def snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes: what must be unchanged after a refused command."""
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def run_cli(argv, capsys) -> str:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert err.startswith("premem: error:") and "\n" not in err, err
    return err


def write_params(tmp_path, text: str) -> Path:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    return f


@pytest.mark.parametrize("text, words", [
    ("", ["p.yaml", "empty"]),
    ("lrs: []\n", ["key 'lrs'", "at least 1"]),
    ("lrs: [-0.001]\n", ["key 'lrs'", "> 0"]),
    ("epochs: [0]\n", ["key 'epochs'", ">= 1"]),
    ("prompt_template: \"{questoin}\\nAnswer:\"\n", ["key 'prompt_template'", "{question}", "questoin"]),
    ("target_template: \" {solution\"\n", ["key 'target_template'"]),
    ("tau: .nan\n", ["key 'tau'", "finite"]),
    ("k: [\n", ["not valid YAML"]),
    ("k: 2\nlrs: [0.001]\nk: 3\n", ["not valid YAML at line 3", "key 'k' given twice"]),
])
def test_bad_params_before_any_work(tmp_path, capsys, text, words):
    params = write_params(tmp_path, text)
    out = tmp_path / "out"
    err = run_cli(["sweep", "--params", params, "--out", out], capsys)
    assert all(w in err for w in words), err
    assert not out.exists()  # nothing written


def test_curate_checks_its_params_before_any_work(tmp_path, capsys):
    params = write_params(tmp_path, f"curation_strategies: [premem, nope]\nout_dir: {tmp_path / 'runs'}\n")
    err = run_cli(["curate", "--params", params], capsys)
    assert "nope" in err, err
    assert not (tmp_path / "runs").exists()


def test_reproduce_checks_its_params_before_any_notebook(tmp_path, capsys):
    err = run_cli(["reproduce", "--params", tmp_path / "missing.yaml"], capsys)
    assert "params file not found" in err and "missing.yaml" in err
    assert not (ROOT / "runs" / "reproduce" / "missing").exists()


def test_force_refuses_what_premem_did_not_make(tmp_path, capsys):
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "thesis.tex").write_text("years of work")
    (notes / "sub" / "data.csv").write_text("1,2")
    before = snapshot(notes)
    for force in (["--force"], []):
        err = run_cli(["sweep", "--params", SMOKE, "--out", notes, *force], capsys)
        assert "holds files that are not a premem record (sub, thesis.tex)" in err and "another --out" in err
        assert snapshot(notes) == before and sorted(p.name for p in notes.iterdir()) == ["sub", "thesis.tex"]


@pytest.mark.parametrize("case, words", [
    ("truncated_npy", ["train_perplexities.npy", "not a readable .npy"]),
    ("ppl_below_1", ["train_perplexities.npy", "below 1"]),
    ("odd_codes", ["train_answer_types5_seed2.npy", "0 (correct), 1 (wrong) or 2", "[3, 7]"]),
])
def test_bad_released_arrays_name_the_file(tmp_path, capsys, case, words):
    ck = tmp_path / "gsm8k_orig_1epochs_full_lr1e-05_bs128" / "checkpoint-5"
    ck.mkdir(parents=True)
    ppl = np.full(4, 2.0)
    types = np.zeros((4, 5), int)
    if case == "ppl_below_1":
        ppl[1] = 0.5
    if case == "odd_codes":
        types[0, 0], types[2, 3] = 3, 7
    np.save(ck / "train_perplexities.npy", ppl)
    np.save(ck / "train_answer_types5_seed2.npy", types)
    np.save(ck / "test_answer_types5_seed2.npy", np.zeros((3, 5), int))
    if case == "truncated_npy":
        data = (ck / "train_perplexities.npy").read_bytes()
        (ck / "train_perplexities.npy").write_bytes(data[:60])
    before = snapshot(tmp_path)
    err = run_cli(["fit", tmp_path], capsys)
    assert all(w in err for w in words) and str(ck) in err, err
    assert snapshot(tmp_path) == before


def test_a_tau_that_memorises_everything_says_so(released_root, capsys):
    err = run_cli(["fit", released_root, "--dataset", "gsm8k", "--tau", "5"], capsys)
    assert "at tau 5 every example is memorized at every checkpoint" in err


def test_a_run_name_that_does_not_parse_beside_ones_that_do(released_root, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("gsm8k_orig_3epochs_full_lr2e-05_bs128", "gsm8k_orig_6epochs_full_lr5e-07_bs128"):
        (folder / name).symlink_to(released_root / name)
    (folder / "gsm8k_my_own_run").symlink_to(released_root / "gsm8k_orig_1epochs_full_lr5e-05_bs128")
    assert main(["fit", str(folder), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    own = next(r for r in fit["runs"] if r["run"] == "gsm8k_my_own_run")
    assert fit["n_points"] == 3 + 6 + 1 and own["epochs"] is None and own["lr"] is None


def test_full_or_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch):
    """A write that fails for the machine's reasons (disk full, read-only) is said in one line;
    the files already there stay (atomic writes)."""
    import errno

    from premem import io

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "examples.csv"))

    monkeypatch.setattr(io, "write_table", full)
    ck = tmp_path / "gsm8k_orig_3epochs_full_lr1e-05_bs128"
    for step in (5, 10, 15):
        (ck / f"checkpoint-{step}").mkdir(parents=True)
        np.save(ck / f"checkpoint-{step}" / "train_perplexities.npy", np.full(4, 2.0 + step))
        np.save(ck / f"checkpoint-{step}" / "train_answer_types5_seed2.npy", np.zeros((4, 5), int))
        np.save(ck / f"checkpoint-{step}" / "test_answer_types5_seed2.npy", np.zeros((3, 5), int))
    err = run_cli(["examples", ck, "--out", tmp_path / "out" / "examples.csv"], capsys)
    assert "cannot use" in err and "examples.csv" in err and "No space left" in err


# ---- damaged records: repaired (the tables then equal an uninterrupted sweep's) --------------------

@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    from premem.config import load_params
    from premem.sweep import sweep

    tmp = tmp_path_factory.mktemp("smoke")
    cfg = load_params(SMOKE, cache_dir=str(tmp / "cache"), workers=1, lrs=[1e-3], data_fractions=[1.0])
    return cfg, sweep(cfg, out=tmp / "record", progress=False)


def tables(folder):
    return {t: pd.read_parquet(folder / f"{t}.parquet") for t in ("samples", "perplexity", "checkpoints", "runs")}


@pytest.mark.parametrize("damage", ["deleted_part", "deleted_part_and_done_marker", "truncated_part"])
def test_a_damaged_finished_run_is_recomputed(smoke_record, tmp_path, damage):
    from premem.sweep import sweep

    cfg, reference = smoke_record
    out = tmp_path / "record"
    shutil.copytree(reference, out)
    (run,) = [p for p in (out / "runs").iterdir()]
    part = sorted((run / "parts").glob("samples-*.parquet"))[0]
    if damage == "truncated_part":
        part.write_bytes(part.read_bytes()[:100])
    else:
        part.unlink()
    if damage == "deleted_part_and_done_marker":
        (run / "done.json").unlink()
    sweep(cfg, out=out, progress=False)
    got, want = tables(out), tables(reference)
    for t in want:
        pd.testing.assert_frame_equal(got[t], want[t], obj=t)
    assert record.is_done(run)


# ---- concurrency and provenance ---------------------------------------------------------------------

def test_a_second_writer_waits_for_the_lock_and_says_who_holds_it(tmp_path):
    folder, release = tmp_path / "rec", tmp_path / "release"
    code = ("import time; from pathlib import Path; from premem import record_folder\n"
            f"with record_folder.locked({str(folder)!r}, 'premem sweep'):\n"
            "    print('held', flush=True)\n"
            f"    while not Path({str(release)!r}).exists(): time.sleep(0.05)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waiter = subprocess.Popen([sys.executable, "-c", "from premem import record_folder\n"
                               f"with record_folder.locked({str(folder)!r}):\n    print('got it', flush=True)"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = waiter.stderr.readline()  # said while the holder still holds it
    assert f"is being written by pid {holder.pid} (premem sweep, since" in said and waiter.poll() is None
    release.touch()
    assert waiter.stdout.readline().strip() == "got it"
    assert holder.wait(timeout=30) == 0 and waiter.wait(timeout=30) == 0


def test_provenance_is_appended_on_every_resume(smoke_record):
    from premem.sweep import sweep

    cfg, reference = smoke_record
    before = record.read_json(reference / "config.json")["provenance"]
    sweep(cfg, out=reference, progress=False)
    after = record.read_json(reference / "config.json")["provenance"]
    assert after[:len(before)] == before and len(after) == len(before) + 1
    assert after[-1]["command"] == "premem sweep" and after[-1]["versions"]["torch"]


# ---- a writer killed in the middle of a write leaves the old file --------------------------------

SLOW_WRITERS = {
    "write_parquet": "io.write_parquet(path, Slow())",
    "write_table_csv": "io.write_table(path, Slow())",
    "write_table_jsonl": "io.write_table(path, Slow())",
    "write_json": "io.write_json(path, dict(big='x' * 10))",
    "write_text": "io.write_text(path, 'new')",
}


@pytest.mark.parametrize("writer", SLOW_WRITERS)
def test_kill_during_each_table_writer_keeps_the_old_file(tmp_path, writer):
    suffix = {"write_parquet": ".parquet", "write_table_csv": ".csv", "write_table_jsonl": ".jsonl",
              "write_json": ".json", "write_text": ".txt"}[writer]
    path = tmp_path / f"table{suffix}"
    path.write_bytes(b"the old, whole file")
    # Every way a writer puts bytes down writes half of them, says so, then stalls until killed.
    code = f"""
import sys, time
from pathlib import Path
from premem import io

def stall(target, *a, **k):
    Path(target).write_bytes(b"half of the ne")
    print("writing", flush=True)
    time.sleep(60)

class Slow:
    to_parquet = to_csv = to_json = lambda self, target, *a, **k: stall(target)

Path.write_text = lambda self, text, *a, **k: stall(self)
path = Path({str(path)!r})
{SLOW_WRITERS[writer]}
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == b"the old, whole file"
    # The half-written temporary is a hidden file beside it, never the table itself.
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(name.startswith(".table.") for name in leftovers) and len(leftovers) == 1
