"""Running the numbered notebooks with papermill, and storing them lean for nbval.

Notebooks are stored with only the outputs nbval compares (cells marked `# NBVAL_CHECK_OUTPUT`), so
diffs stay readable and no figure bytes live in the .ipynb files.
"""
from __future__ import annotations

from pathlib import Path

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def strip_outputs(nb) -> None:
    """Drop every output except the text of checked cells; clear execution counts and run metadata."""
    for number, cell in enumerate(nb.cells, start=1):
        cell.metadata.pop("papermill", None)  # papermill times markdown cells too
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        # nbval compares only cells that were run, which it tells by their execution count.
        checked = cell.source.lstrip().startswith(CHECK_MARK)
        cell.execution_count = number if checked else None
        if checked:
            cell.outputs = [o for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"]
            for o in cell.outputs:
                o.pop("execution_count", None)
        else:
            cell.outputs = []
    nb.metadata.pop("papermill", None)
    nb.metadata.get("language_info", {}).pop("version", None)


def store_executed(executed: str | Path, stored: str | Path) -> None:
    """Copy checked outputs of an executed notebook into its stored, stripped source."""
    import nbformat

    from premem.io import write_text

    nb = nbformat.read(executed, as_version=4)
    # papermill adds an injected-parameters cell; the stored notebook keeps only its own cells.
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    strip_outputs(nb)
    write_text(stored, nbformat.writes(nb) + "\n")


def open_record(namespace: dict):
    """The setup of notebooks 02-05: (cfg, record_dir, runs, tau, how, figures folder).

    By default the notebook's params are swept (cached: at once when already swept) and figures go
    to their figures_dir. With `record_dir` set (`papermill -p record_dir runs/mine`) it reads that
    record instead, whatever wrote it (premem record, PreMemCallback, a sweep), with the params the
    record was made with, and saves its results and figures into <record_dir>/results and /figures.
    """
    from premem import metrics, record, sweep
    from premem.config import from_notebook, project_root

    given = namespace.get("record_dir")
    if given:
        record_dir = Path(given) if Path(given).is_absolute() else project_root() / given
        # Results and figures go into the record: never over the project's, which the ledger reads.
        cfg = record.read_config(record_dir).model_copy(
            update=dict(out_dir=str(record_dir), figures_dir=str(record_dir / "figures")))
        figures = cfg.path("figures_dir")
    else:
        cfg = from_notebook(namespace)
        record_dir = sweep.sweep(cfg)
        figures = cfg.path("figures_dir")
    runs = record.read_runs(record_dir)
    tau, how = metrics.chosen_tau(cfg, runs)
    print(f"{cfg.name}: {len(runs)} runs from {record_dir}")
    print(how)
    return cfg, record_dir, runs, tau, how, figures


# Notebooks whose data come from a params file of their own, whatever `--params` says.
NOTEBOOK_PARAMS = {"01": "params/released_llama3-8b.yaml"}
DEFAULT_PARAMS = "params/tiny.yaml"


def numbered_notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# The expensive stages of the live notebooks: run as commands before them, with their progress in
# the terminal; the notebooks then read the cached records in seconds. A new stage is one entry.
STAGES = {"sweep": ("02", "03", "04", "05", "06"), "curate": ("07",)}


def _stage(name: str, cfg, progress: bool):
    if name == "sweep":
        from premem.sweep import sweep

        return sweep(cfg, progress=progress)
    from premem.curation import curate

    return curate(cfg, progress=progress)


def _kernel_manager():
    """Kernels over IPC sockets in a temporary folder: no TCP ports, so no "running over TCP
    without encryption" warning for every notebook."""
    import os
    import tempfile
    import uuid

    from jupyter_client.manager import KernelManager

    class IPCKernelManager(KernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", os.path.join(tempfile.gettempdir(), f"premem-kernel-{uuid.uuid4().hex[:12]}"))
            super().__init__(**kw)

    return IPCKernelManager


def reproduce(params: str | None = None, only: list[str] | None = None, progress: bool = True) -> "pd.DataFrame":
    """Run the live params' expensive stages (sweep, curation; cached) with their progress shown,
    then the numbered notebooks in order with papermill (executed copies under runs/reproduce/),
    then the ledger; returns one row per stage with its time."""
    import sys
    import time

    import pandas as pd
    import papermill
    import yaml

    from premem.config import load_params, project_root
    from premem.errors import PremError

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

    def named(f: Path) -> str:
        return str(f.relative_to(root) if f.is_relative_to(root) else f)  # a user's own file as given

    rows, numbers = [], {b.name[:2] for b in books}
    for stage, users in STAGES.items():
        if numbers & set(users):
            print(f"reproduce: {stage} {live.name} (cached parts are not redone)", file=sys.stderr, flush=True)
            start = time.time()
            _stage(stage, live, progress)
            rows.append(dict(stage=stage, params=named(live_file), config_hash=live.hash(),
                             seconds=round(time.time() - start, 1), executed=""))
    for book in books:
        params_file, cfg = files[book], configs[book]
        print(f"reproduce: {book.name}", file=sys.stderr, flush=True)
        start = time.time()
        # A notebook whose parameters cell names params_file gets the file (no warnings about keys
        # its cell lacks); notebook 01's flat parameters get the file's keys.
        takes_file = "params_file" in papermill.inspect_notebook(str(book))
        parameters = {"params_file": str(params_file)} if takes_file else yaml.safe_load(params_file.read_text()) or {}
        papermill.execute_notebook(str(book), str(out_dir / book.name), parameters=parameters, cwd=str(book.parent),
                                   progress_bar=False, kernel_name="python3", kernel_manager_class=_kernel_manager())
        rows.append(dict(stage=book.name, params=named(params_file), config_hash=cfg.hash(),
                         seconds=round(time.time() - start, 1), executed=str((out_dir / book.name).relative_to(root))))
    from premem import ledger

    ledger.write_for(params)  # the claims ledger from what the notebooks saved
    table = pd.DataFrame(rows)
    return pd.concat([table, pd.DataFrame([dict(stage="total", seconds=round(table.seconds.sum(), 1))])],
                     ignore_index=True).fillna("")
