"""premem.io: atomic writes keep the old file on failure, leave no temporary behind, and give the
result the permissions of any file written here (mkstemp's are private)."""
import os

import pandas as pd
import pytest

from premem import io


def test_atomic_write_replaces_and_reads_like_a_plain_file(tmp_path):
    umask = os.umask(0o022)  # os.umask is read by setting it: put it back at once
    os.umask(umask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    f = io.write_text(tmp_path / "sub" / "a.txt", "old")
    io.write_text(f, "new")
    assert f.read_text() == "new" and sorted(p.name for p in f.parent.iterdir()) == ["a.txt"]
    assert f.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~umask
    io.write_parquet(tmp_path / "t.parquet", pd.DataFrame(dict(a=[1, 2])))
    assert os.stat(tmp_path / "t.parquet").st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file(tmp_path):
    f = io.write_json(tmp_path / "c.json", dict(a=1))
    with pytest.raises(ZeroDivisionError):
        with io.atomic_target(f) as tmp:
            tmp.write_text("half")
            1 / 0
    assert f.read_text() == '{\n  "a": 1\n}\n' and [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_a_folder_is_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "folder"
    with pytest.raises(RuntimeError):
        with io.atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("stopped mid-write")
    assert not target.exists() and os.listdir(tmp_path / "sub") == []  # nothing, not even the temporary
    with io.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("whole")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "whole" and os.listdir(tmp_path / "sub") == ["folder"]
