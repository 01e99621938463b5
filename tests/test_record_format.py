"""The record format evolves without losing what was recorded: a table or column added to SCHEMA
(with the FORMAT that added it) leaves every checkpoint recorded before counted as recorded and
readable; checkpoints recorded after must hold the new table and column."""
import shutil

import numpy as np
import pandas as pd
import pytest

from premem import record, record_schema
from premem.errors import PremError
from premem.record_schema import Column


def test_a_table_and_a_column_added_to_the_format_keep_recorded_checkpoints(smoke_sweep, tmp_path, monkeypatch):
    _, shared = smoke_sweep
    rec = tmp_path / "rec"
    shutil.copytree(shared, rec, ignore=shutil.ignore_patterns("robustness"))  # another worker may be adding it
    before = {r.run: r for r in record.read_runs(rec)}
    steps = {d: sorted(int(f.stem.split("-")[1]) for f in (d / "parts").glob("samples-*.parquet"))
             for d in sorted((rec / "runs").iterdir()) if (d / "parts").is_dir()}
    assert steps and all(record.part_done(d, s) for d, ss in steps.items() for s in ss)

    # Format 2: a column of the checkpoints table and a table of its own, one entry each.
    monkeypatch.setattr(record_schema, "FORMAT", 2)
    monkeypatch.setitem(record_schema.SCHEMA, "checkpoints", record_schema.SCHEMA["checkpoints"] + (
        Column("lr_now", "number", "learning rate at the checkpoint", since=2),))
    monkeypatch.setitem(record_schema.SCHEMA, "lengths", (
        Column("run", "str", "run name"), Column("step", "int", "optimiser step"),
        Column("example_id", "str", "example id"), Column("length", "int", "sampled tokens")))
    monkeypatch.setattr(record_schema, "TABLES", record_schema.TABLES + ("lengths",))
    monkeypatch.setitem(record_schema.TABLE_SINCE, "lengths", 2)
    monkeypatch.setitem(record_schema.SORT_KEYS, "lengths", ["run", "step", "example_id"])

    assert all(record.part_done(d, s) for d, ss in steps.items() for s in ss)  # nothing to record again
    for r in record.read_runs(rec):
        np.testing.assert_array_equal(r.train_acc, before[r.run].train_acc)
        np.testing.assert_array_equal(r.perplexity, before[r.run].perplexity)

    # A checkpoint recorded in format 2 holds both, or it is not recorded.
    folder, step = next(iter(steps.items()))
    step = step[-1]
    run = pd.read_parquet(record.part_path(folder, "samples", step)).run.iloc[0]
    with pytest.raises(PremError, match="missing columns \\['lr_now'\\] of the checkpoints table"):
        record.write_part(folder, "checkpoints", step, pd.read_parquet(record.part_path(folder, "checkpoints", step)))
    for table in ("perplexity", "checkpoints", "samples"):  # the recorder's order: samples last
        part = pd.read_parquet(record.part_path(folder, table, step))
        record.write_part(folder, table, step, part.assign(lr_now=1e-3) if table == "checkpoints" else part)
    assert not record.part_done(folder, step)  # format 2, and no lengths part
    record.write_part(folder, "lengths", step, pd.DataFrame(dict(run=[run], step=[step], example_id=["x"], length=[7])))
    assert record.part_done(folder, step)
    (rec / record.MANIFEST).unlink()
    record.finish(rec)
    stats = pd.read_parquet(rec / "checkpoints.parquet")
    assert stats.lr_now.notna().tolist() == ((stats.run == run) & (stats.step == step)).tolist()  # NaN before
    assert pd.read_parquet(rec / "lengths.parquet").length.tolist() == [7]
    assert len(record.read_runs(rec)) == len(before)
