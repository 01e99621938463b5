"""premem.bars: a stage's bar counts checkpoints as workers write them, not finished runs."""
import io
import time

from tqdm import tqdm

from premem import bars


def test_a_run_saves_every_so_many_epochs_and_at_its_last():
    assert [bars.saves(e, s) for e, s in [(3, 1), (15, 5), (5, 2), (1, 3), (4, 4)]] == [3, 3, 3, 1, 1]


def test_recorded_checkpoints_are_the_samples_parts_of_the_runs_asked(tmp_path):
    for run, steps in {"a": [1, 2], "b": [3]}.items():
        parts = tmp_path / "runs" / run / "parts"
        parts.mkdir(parents=True)
        for s in steps:
            (parts / f"samples-{s:08d}.parquet").touch()
            (parts / f"perplexity-{s:08d}.parquet").touch()  # written before samples: not yet a checkpoint
    assert bars.recorded_checkpoints(tmp_path, ["a", "b"]) == 3
    assert bars.recorded_checkpoints(tmp_path, ["b", "c"]) == 1


def test_the_bar_follows_what_the_disk_says_while_the_block_runs():
    done = iter([0, 1, 1, 3, 5, 5, 5, 5, 5, 5, 5, 5])
    seen = []
    out = io.StringIO()
    bar = tqdm(total=5, unit="checkpoint", file=out, mininterval=0)
    with bars.counting(bar, lambda: next(done), every=0.01):
        while bar.n < 5:  # moved by the watcher thread, not by this block
            seen.append(bar.n)
            time.sleep(0.005)
    assert bar.n == 5 and seen == sorted(seen) and 5 not in seen
    assert "5/5" in out.getvalue() and "checkpoint" in out.getvalue()
