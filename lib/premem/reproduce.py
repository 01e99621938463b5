"""`premem reproduce`: the expensive stages first (STAGES, their bars in the terminal), then the
numbered notebooks with papermill on the cached records, then the ledger; and storing the notebooks
with the CPU default's results.

A stored notebook holds the outputs of a `premem reproduce --store` run on params/tiny.yaml (figures
and tables: what a reader sees before running anything), with no run metadata. The test suite runs
the notebooks under nbval on the smoke params instead, through one switch ($PREMEM_NOTEBOOK_PARAMS,
which conftest.py sets): the cells marked `# NBVAL_CHECK_OUTPUT` are then compared with the smoke
run's outputs, kept in notebooks/outputs/<params name>/ by `premem reproduce --params
params/smoke.yaml --store`.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import yaml
from jupyter_client.manager import KernelManager

from premem import claims, curation, ledger, perturb, shipped, sweep
from premem.config import DEFAULT_PARAMS, NOTEBOOK_PARAMS, SWITCH, load_params, project_root, shown
from premem.errors import PremError
from premem.io import write_text

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
REFERENCES = "notebooks/outputs"
WIDGET = "application/vnd.jupyter.widget-view+json"  # the output type of a tqdm bar under ipywidgets


def strip_run_metadata(nb) -> None:
    """Drop what differs from run to run (timings, progress bars: on stderr, or as widgets, whose
    state a stored notebook cannot replay; versions); number the cells in order so a rerun's diff
    shows only changed results."""
    for number, cell in enumerate(nb.cells, start=1):
        cell.metadata.pop("papermill", None)  # papermill times markdown cells too
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        cell.execution_count = number
        cell.outputs = [o for o in cell.outputs if not _progress(o)]
        for o in cell.outputs:
            if "execution_count" in o:
                o["execution_count"] = number
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)


def _progress(output) -> bool:
    """A progress bar's output: text on stderr, or a tqdm widget (ipywidgets)."""
    if output.get("output_type") == "stream":
        return output.get("name") == "stderr"
    return WIDGET in output.get("data", {})


def checked_outputs(nb) -> dict[str, list]:
    """{cell id: stdout outputs} of the cells nbval compares."""
    return {c.id: [o for o in c.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"]
            for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith(CHECK_MARK)}


def use_references(items, root: Path) -> None:
    """Under the switch, make nbval compare each checked cell with the switched params' stored
    outputs (notebooks/outputs/<name>/) instead of the default's, which the notebook shows."""
    switched = os.environ.get(SWITCH)
    if not switched:
        return
    name = load_params(Path(switched) if Path(switched).is_absolute() else root / switched).name
    if name == load_params(root / DEFAULT_PARAMS).name:
        return
    refs = {}
    for item in items:
        cell = getattr(item, "cell", None)
        if type(item).__name__ != "IPyNbCell" or not cell.source.lstrip().startswith(CHECK_MARK):
            continue
        book = Path(str(item.fspath))
        f = root / REFERENCES / name / (book.stem + ".json")
        if f not in refs:
            refs[f] = json.loads(f.read_text()) if f.is_file() else {}
        missing = [dict(output_type="stream", name="stdout", text=(
            f"(no stored output of this cell for {name} in {f.relative_to(root)}: run "
            f"`premem reproduce --params {switched} --store`)\n"))]

        cell.outputs = [nbformat.from_dict(o) for o in refs[f].get(cell.id, missing)]
        cell.execution_count = cell.execution_count or 1  # nbval compares only cells that ran


def _executed(executed: str | Path):
    nb = nbformat.read(executed, as_version=4)
    # papermill adds an injected-parameters cell; the stored notebook keeps only its own cells.
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    strip_run_metadata(nb)
    return nb


def store_executed(executed: str | Path, stored: str | Path) -> None:
    """The executed notebook, outputs and all, over its stored source (the default params' run)."""
    write_text(stored, nbformat.writes(_executed(executed)) + "\n")


def store_reference(executed: str | Path, params_name: str, root: Path) -> Path:
    """The checked cells' outputs of a run on other params, for nbval under the switch."""
    out = root / REFERENCES / params_name / (Path(executed).stem + ".json")
    return write_text(out, json.dumps(checked_outputs(_executed(executed)), indent=1, ensure_ascii=False) + "\n")


def numbered_notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# The expensive stages of the live notebooks, in order: (what runs it, the notebooks that read it).
# `premem reproduce` runs them as commands first, with their progress in the terminal; the notebooks
# then read the cached records in seconds. A new stage is one entry.
STAGES = {
    "sweep": (lambda cfg, progress: shipped.swept(cfg) or sweep.sweep(cfg, progress=progress),
              ("02", "03", "04", "05", "06")),
    "perturb": (lambda cfg, progress: _perturb(claims.open_sweep(cfg), progress), ("06",)),
    "curate": (lambda cfg, progress: curation.curate(cfg, progress=progress), ("07",)),
}


# Notebooks at a time: on cached records each is a kernel's start, imports and a few plots (~5 s,
# one core), so two at once halve the notebooks' share of a cached reproduce.
NOTEBOOK_WORKERS = 2


def _perturb(s, progress: bool) -> None:
    perturb.sample_perturbations(s.record_dir, s.cfg, tau=s.tau, progress=progress)  # cached: starts no worker


def _kernel_manager():
    """Kernels over IPC sockets in a temporary folder: no TCP ports, so no "running over TCP
    without encryption" warning for every notebook."""

    class IPCKernelManager(KernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", os.path.join(tempfile.gettempdir(), f"premem-kernel-{uuid.uuid4().hex[:12]}"))
            super().__init__(**kw)

    return IPCKernelManager


@contextlib.contextmanager
def _without(variable: str):
    saved = os.environ.pop(variable, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[variable] = saved


def reproduce(params: str | None = None, only: list[str] | None = None, progress: bool = True,
              store: bool = False) -> "pd.DataFrame":
    """Run the live params' expensive stages (sweep, curation; cached) with their progress shown,
    then the numbered notebooks in order with papermill (executed copies under runs/reproduce/),
    then the ledger; returns one row per stage with its time. `store`: the executed notebooks
    become the stored ones (default params), or the nbval references of `params`."""
    began = time.time()
    root = project_root()
    books = numbered_notebooks(root)
    if only:
        unknown = set(only) - {b.name[:2] for b in books}
        if unknown:
            raise PremError(f"--only: no notebook numbered {', '.join(sorted(unknown))} in {root / 'notebooks'}")
        books = [b for b in books if b.name[:2] in only]
    # Every params file is validated before anything runs (a bad --params fails at once).
    files = {b: root / NOTEBOOK_PARAMS.get(b.name[:2], params or DEFAULT_PARAMS) for b in books}
    configs = {b: load_params(f) for b, f in files.items()}
    live_file = root / (params or DEFAULT_PARAMS)
    live = load_params(live_file)
    out_dir = root / "runs" / "reproduce"
    out_dir.mkdir(parents=True, exist_ok=True)

    rows, numbers = [], {b.name[:2] for b in books}
    for stage, (run_stage, users) in STAGES.items():
        if numbers & set(users):
            print(f"reproduce: {stage} {live.name} (cached parts are not redone)", file=sys.stderr, flush=True)
            start = time.time()
            run_stage(live, progress)
            rows.append(dict(stage=stage, params=shown(live_file), config_hash=live.hash(),
                             seconds=round(time.time() - start, 1), executed=""))
    # The notebooks run NOTEBOOK_WORKERS at a time (threads: each waits on its own kernel process),
    # on the params given here whatever the caller's switch; rows, stored copies and progress lines
    # come in the notebooks' order as each finishes. A failed notebook cancels those not started.
    jobs, pool = {}, ThreadPoolExecutor(NOTEBOOK_WORKERS)
    with _without(SWITCH):
        try:
            for book in books:
                # A notebook whose parameters cell names params_file gets the file (no warnings about
                # keys its cell lacks); notebook 01's flat parameters get the file's keys.
                takes_file = "params_file" in papermill.inspect_notebook(str(book))
                parameters = ({"params_file": str(files[book])} if takes_file
                              else yaml.safe_load(files[book].read_text()) or {})
                jobs[book] = pool.submit(_execute, str(book), str(out_dir / book.name), parameters)
            for book in books:
                seconds = jobs[book].result()
                print(f"reproduce: {book.name} ({seconds:.0f} s)", file=sys.stderr, flush=True)
                rows.append(dict(stage=book.name, params=shown(files[book]), config_hash=configs[book].hash(),
                                 seconds=seconds, executed=str((out_dir / book.name).relative_to(root))))
                if store and live_file.resolve() == (root / DEFAULT_PARAMS).resolve():
                    store_executed(out_dir / book.name, book)
                elif store:
                    store_reference(out_dir / book.name, live.name, root)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    ledger.write_for(params)  # the claims ledger, from the records the stages made
    table = pd.DataFrame(rows)
    # The total is the wall clock (notebooks overlap): less than the sum of the rows.
    total = dict(stage="total (wall)", seconds=round(time.time() - began, 1))
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True).fillna("")


def _execute(book: str, executed: str, parameters: dict) -> float:
    """One notebook with papermill (in a thread of `reproduce`); its seconds."""
    start = time.time()
    # The kernel starts in the notebook's folder through nbclient's resources, not papermill's `cwd`:
    # that changes this whole process's working directory, and two notebooks overlapping in threads
    # left it in notebooks/ (the caller's relative paths then broke).
    papermill.execute_notebook(book, executed, parameters=parameters, progress_bar=False, kernel_name="python3",
                               kernel_manager_class=_kernel_manager(),
                               resources={"metadata": {"path": str(Path(book).parent)}})
    return round(time.time() - start, 1)
