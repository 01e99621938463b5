"""Shipped records (premem.shipped): a finished record's tables carried in records/, read where the
params' own folder holds no record, never preferred to one made here."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from premem import claims, io, ledger, record, shipped
from premem.cli import main
from premem.config import load_params
from premem.errors import PremError

ROOT = Path(__file__).resolve().parents[1]


def test_a_shipped_record_is_read_where_none_was_made(tmp_path, monkeypatch, smoke_sweep):
    shared, made = smoke_sweep
    project = tmp_path / "project"
    copy = shipped.ship(made, root=project)
    assert copy == project / "records" / f"smoke-{shared.hash()}"  # <name>-<hash>, as the params' own folder
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [*shipped.TABLES, *[c for c in shipped.CACHES if (made / c).is_dir()]])  # no runs/, no checkpoints
    assert record.finished(copy)
    for table in ("samples", "perplexity", "checkpoints", "runs"):
        name = f"{table}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(copy / name), pd.read_parquet(made / name))

    monkeypatch.setenv("PREMEM_ROOT", str(project))
    cfg = load_params(ROOT / "params/smoke.yaml", out_dir=str(tmp_path / "own"), workers=1,
                      cache_dir=shared.cache_dir)
    assert cfg.hash() == shared.hash()
    assert shipped.find_dir(cfg) == copy and shipped.is_shipped(copy) and shipped.swept(cfg)
    from_copy, from_made = claims.predicts_test(claims.open_sweep(cfg)), claims.predicts_test(claims.open_sweep(shared))
    assert from_copy.ours == from_made.ours and from_copy.verdict == from_made.verdict
    pd.testing.assert_frame_equal(from_copy.tables["checkpoints"], from_made.tables["checkpoints"])

    # The ledger's extra column reads it; its missing claims say which command makes them.
    built, _ = ledger.build(None, cfg, also={"copy": cfg})
    assert built["live, copy"].iloc[0] == from_made.ours and built["verdict (copy)"].iloc[0] == from_made.verdict
    assert built["params (copy)"].iloc[0] == from_made.source
    assert built["live, copy"].iloc[4].startswith("(no finished curation at")
    assert list(built.columns[-3:]) == ["live, copy", "verdict (copy)", "params (copy)"]

    # A record made here is the one read, the shipped copy only where there is none.
    shutil.copytree(made, record.default_dir(cfg))
    assert shipped.find_dir(cfg) == record.default_dir(cfg) and not shipped.is_shipped(record.default_dir(cfg))

    # Shipping again replaces the copy whole, but never over a file premem did not put there.
    (copy / "stray.parquet").write_text("x")
    (copy / "notes.txt").write_text("mine")
    with pytest.raises(PremError, match="not a file of a shipped record"):
        shipped.ship(made, root=project)
    assert (copy / "notes.txt").read_text() == "mine"
    (copy / "notes.txt").unlink()
    (copy / "stray.parquet").unlink()
    assert shipped.ship(made, root=project) == copy and not [p for p in copy.parent.iterdir() if p.name != copy.name]


def test_only_a_finished_record_ships(tmp_path, smoke_sweep, capsys):
    shared, made = smoke_sweep
    partial = tmp_path / "partial"
    shutil.copytree(made, partial)
    (partial / record.MANIFEST).unlink()
    part = next((partial / "runs").glob("*/parts/samples-*.parquet"))
    io.write_parquet(part, pd.read_parquet(part).head(1))  # a part newer than the tables: not finished
    with pytest.raises(PremError, match="not a finished record"):
        shipped.ship(partial, root=tmp_path / "project")
    assert not (tmp_path / "project").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlrs: oops\n")
    assert main(["ship", "--params", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("premem: error:")
