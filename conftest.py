"""Shared test setup: where the authors' released logs are, and skipping what needs them."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
RELEASED = Path(os.environ.get("PREMEM_RELEASED_LOGS") or ROOT.parent / "shared" / "released-logs" / "ckpts")
HAVE_RELEASED = RELEASED.is_dir()
NEEDS_RELEASED = ("01_released_logs.ipynb",)

if HAVE_RELEASED:
    # Notebook kernels started by nbval inherit this, so notebook 01 reads the same logs.
    os.environ["PREMEM_RELEASED_LOGS"] = str(RELEASED)
# Notebooks and the CLI resolve relative paths against the project root, not the notebook folder.
os.environ.setdefault("PREMEM_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The one switch: the live notebooks run on the smoke params under nbval (minutes, not the CPU
# default's half hour), compared with smoke's stored outputs. Set it to params/tiny.yaml to check
# the stored outputs themselves (the cached records make that minutes too).
os.environ.setdefault("PREMEM_NOTEBOOK_PARAMS", "params/smoke.yaml")


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """(cfg, record folder) of one smoke sweep, shared by every test file that only reads it (or adds
    caches beside its tables): the notebooks' own record under nbval (params/smoke.yaml's, in runs/),
    made by whichever asks first (the sweep's lock makes the other wait, then read it finished; a
    clean clone used to sweep smoke twice, ~20-40 s), and copied into each pytest worker's temporary
    folder, so that no test writes beside the tables the notebooks read."""
    import shutil

    from premem import record_folder, sweep
    from premem.config import load_params

    cfg = load_params(ROOT / "params" / "smoke.yaml")  # one worker: two pytest workers share the cores
    made = sweep.sweep(cfg, progress=False)
    copy = tmp_path_factory.mktemp("smoke-sweep") / "record"
    # Only the sweep's own: the notebooks may be adding their results and caches beside it now.
    shutil.copytree(made, copy, ignore=shutil.ignore_patterns(record_folder.LOCK, "robustness", "results",
                                                              "figures"))
    return cfg, copy


@pytest.fixture(scope="session")
def released_root() -> Path:
    if not HAVE_RELEASED:
        pytest.skip(f"released logs not found at {RELEASED} (set PREMEM_RELEASED_LOGS)")
    return RELEASED


# Tests that write the project's own runs/ and figures folders (the notebooks under nbval sweep smoke
# there; reproduce's test runs one of them): under pytest-xdist one worker runs them all, in order.
PROJECT_FOLDERS = (".ipynb::", "::test_reproduce_runs_one_notebook_and_writes_its_ledger")
# Longest first (seconds measured in place, 2026-12-07), so that under pytest-xdist no worker is left
# alone with a long one at the end while the other has finished.
LONGEST = ("tests/test_engines.py", "notebooks/", "tests/test_stages.py", "tests/test_sweep.py",
           "tests/test_own_run.py", "tests/test_model.py", "tests/test_curation.py", "tests/test_bad_input.py",
           "tests/test_qlora.py", "tests/test_trust.py", "tests/test_robustness.py", "tests/test_ledger.py",
           "tests/test_training.py", "tests/test_config.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`bash run.sh test` runs the suite in two pytest-xdist workers: a test file goes to one worker
    whole (its module fixtures are built once), and the notebooks with reproduce's test to one worker,
    in order. (A scheduler of our own: pytest-xdist 3.8's `xdist_group` marks do not group under
    pytest 9, which no longer reads the node ids it rewrites.)"""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # files in the order pytest_collection_modifyitems leaves them

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "project-folders" if any(p in nodeid for p in PROJECT_FOLDERS) else nodeid.split("::", 1)[0]

    return ByFile(config, log)


def pytest_collection_modifyitems(config, items):
    from premem.reproduce import use_references

    use_references(items, ROOT)
    # The longest files first (tests/test_engines.py ~2 min, the notebooks ~1.5 from nothing).
    items.sort(key=lambda item: next((i for i, f in enumerate(LONGEST) if item.nodeid.startswith(f)), len(LONGEST)))
    if HAVE_RELEASED:
        return
    skip = pytest.mark.skip(reason=f"released logs not found at {RELEASED} (set PREMEM_RELEASED_LOGS)")
    for item in items:
        if any(name in str(item.fspath) for name in NEEDS_RELEASED):
            item.add_marker(skip)


def pytest_configure(config):
    # Two pytest-xdist workers share the two cores: each computes at one torch thread, or OpenMP's
    # threads spin at their barriers while the other worker holds a core.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
