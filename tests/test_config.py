from pathlib import Path

import pytest

from premem.config import Params, load_params
from premem.errors import PremError

PARAMS = sorted((Path(__file__).parents[1] / "params").glob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_every_params_file_validates(path):
    cfg = load_params(path)
    assert cfg.name == path.stem


def test_defaults_are_the_cpu_default():
    cfg = load_params()
    assert cfg == Params() and cfg.base_model == "embedded" and cfg.task == "arith"


@pytest.mark.parametrize("text, match", [
    ("bogus_key: 1\n", "unknown key 'bogus_key'"),
    ("k: 0\n", "key 'k'"),
    ("k: '5'\n", "key 'k'"),
    ("lrs: 0.1\n", "key 'lrs'"),
    ("tau: minus two\n", "key 'tau'"),
    ("- a\n- b\n", "mapping"),
    ("k: [\n", "not valid YAML"),
])
def test_bad_params_name_file_and_key(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(PremError, match=match) as err:
        load_params(f)
    assert str(f) in str(err.value)


def test_missing_file_and_hash_changes_with_content(tmp_path):
    with pytest.raises(PremError, match="not found"):
        load_params(tmp_path / "none.yaml")
    assert load_params(dict(k=4)).hash() == load_params(dict(k=4)).hash()
    assert load_params(dict(k=4)).hash() != load_params(dict(k=5)).hash()


def test_relative_paths_resolve_against_project_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PREMEM_ROOT", str(tmp_path))
    cfg = load_params(dict(figures_dir="figs", released_logs="/abs/logs"))
    assert cfg.path("figures_dir") == tmp_path / "figs"
    assert cfg.path("released_logs") == Path("/abs/logs")
