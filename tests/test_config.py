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
    """The CPU default's values live in one place, the schema: params/tiny.yaml names nothing else."""
    import yaml

    tiny = Path(__file__).parents[1] / "params" / "tiny.yaml"
    assert yaml.safe_load(tiny.read_text()) == {"name": "tiny"}
    cfg = load_params(tiny)
    assert cfg == Params(name="tiny") and cfg.base_model == "embedded" and cfg.task == "arith"
    assert (cfg.embedded_tokenizer, cfg.lrs, cfg.epochs, cfg.tau_rule) == ("bpe", [1e-4, 5e-4, 2e-3], [3, 15], "heldout")


def test_embedded_keys_shape_only_an_embedded_base():
    hub = load_params(dict(base_model="some/hub-model"))
    assert hub.hash() == hub.model_copy(update=dict(embedded_steps=5)).hash()
    tiny = load_params(dict(name="tiny"))
    assert tiny.hash() != tiny.model_copy(update=dict(embedded_steps=5)).hash()


@pytest.mark.parametrize("text, match", [
    ("bogus_key: 1\n", "unknown key 'bogus_key'"),
    ("k: 0\n", "key 'k'"),
    ("k: '5'\n", "key 'k'"),
    ("lrs: 0.1\n", "key 'lrs'"),
    ("tau: minus two\n", "key 'tau'"),
    ("- a\n- b\n", "mapping"),
    ("k: [\n", "not valid YAML"),
    ("lrs: [5e-7]\n", "YAML reads 5e-7 as text: write it with a dot"),
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


@pytest.fixture
def reads(monkeypatch):
    """The Params fields a block of code reads (every instance, copies and reloads included)."""
    seen, fields, original = set(), set(Params.model_fields), Params.__getattribute__

    def spy(self, name):
        if name in fields:
            seen.add(name)
        return original(self, name)

    monkeypatch.setattr(Params, "__getattribute__", spy)
    return seen


def test_every_key_a_sweep_reads_shapes_its_hash_or_is_declared_not_to(reads, tmp_path):
    """A key the sweep reads and the record hash leaves out would let a changed value reuse a stale
    record: each key read must be in RECORD_KEYS or in NOT_SHAPING (which says why)."""
    from premem import sweep
    from premem.config import LATER_RECORD_KEYS, NOT_SHAPING, RECORD_KEYS

    from tiny_lm import single_thread

    cfg = load_params(Path(__file__).parents[1] / "params/smoke.yaml", workers=1, n_train=6, n_test=3, n_heldout=2,
                      k=1, lrs=[1e-3], epochs=[1], data_fractions=[1.0], max_new_tokens=24,
                      cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path))
    reads.clear()
    with single_thread():
        sweep.sweep(cfg, progress=False)
    assert reads, "the spy saw nothing"
    assert reads - set(RECORD_KEYS) - set(LATER_RECORD_KEYS) - set(NOT_SHAPING) == set()


def test_every_key_a_curation_reads_shapes_its_hash_or_is_declared_not_to(reads, tmp_path):
    from premem import curation
    from premem.config import CURATION_FOLDED, CURATION_KEYS, LATER_RECORD_KEYS, NOT_SHAPING, RECORD_KEYS

    from tiny_lm import single_thread

    cfg = load_params(Path(__file__).parents[1] / "params/smoke.yaml", workers=1, n_train=6, n_test=3, n_heldout=2,
                      k=1, epochs=[1], max_new_tokens=24, curation_rounds=[2], curation_iid_rounds=None,
                      curation_strategies=["premem", "iid", "ifd"], cache_dir=str(tmp_path / "cache"),
                      out_dir=str(tmp_path))
    reads.clear()
    with single_thread():
        curation.curate(cfg, progress=False)
    hashed = set(RECORD_KEYS) | set(LATER_RECORD_KEYS) | set(CURATION_KEYS) | set(NOT_SHAPING) | set(CURATION_FOLDED)
    assert reads and reads - hashed == set()
