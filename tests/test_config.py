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


def test_from_notebook_reads_the_file_or_the_injected_keys(monkeypatch):
    from premem.config import from_notebook, project_root

    smoke = load_params(project_root() / "params" / "smoke.yaml")
    assert from_notebook({"params_file": "params/smoke.yaml", "x": 1}) == smoke
    # papermill -f tiny.yaml injects tiny's keys after the parameters cell: they are the config.
    injected = {"params_file": "params/smoke.yaml", "name": "tiny", "k": 3}
    assert from_notebook(injected) == load_params(dict(name="tiny", k=3))
    with pytest.raises(PremError, match="key 'k'"):
        from_notebook({"k": "three"})
    with pytest.raises(PremError, match="params_file"):
        from_notebook({"x": 1})


def test_record_hash_ignores_analysis_and_path_keys():
    from premem.config import RECORD_KEYS

    base = load_params()
    assert set(RECORD_KEYS) <= set(Params.model_fields)
    for key, value in dict(tau=-1.0, figures_dir="x", out_dir="y", workers=1, name="other").items():
        assert load_params({key: value}).hash() == base.hash(), key
    for key, value in dict(lrs=[1e-3], k=7, n_heldout=3, max_checkpoints=2).items():
        assert load_params({key: value}).hash() != base.hash(), key
