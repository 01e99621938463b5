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


def reproduce(params: str | None = None, only: list[str] | None = None, progress: bool = True) -> "pd.DataFrame":
    """Run the numbered notebooks in order with papermill; executed copies go under runs/reproduce/."""
    import time

    import pandas as pd
    import papermill
    import yaml
    from tqdm.auto import tqdm

    from premem.config import load_params, project_root
    from premem.errors import PremError

    root = project_root()
    books = numbered_notebooks(root)
    if only:
        unknown = set(only) - {b.name[:2] for b in books}
        if unknown:
            raise PremError(f"--only: no notebook numbered {', '.join(sorted(unknown))} in {root / 'notebooks'}")
        books = [b for b in books if b.name[:2] in only]
    # Every params file is validated before any notebook runs (a bad --params fails at once).
    files = {b: root / NOTEBOOK_PARAMS.get(b.name[:2], params or DEFAULT_PARAMS) for b in books}
    configs = {b: load_params(f) for b, f in files.items()}
    out_dir = root / "runs" / "reproduce"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(books, desc="reproduce", unit="notebook", disable=not progress)
    for book in bar:
        bar.set_postfix_str(book.name)
        params_file, cfg = files[book], configs[book]
        start = time.time()
        # A notebook whose parameters cell names params_file gets the file (no warnings about keys
        # its cell lacks); notebook 01's flat parameters get the file's keys.
        takes_file = "params_file" in papermill.inspect_notebook(str(book))
        parameters = {"params_file": str(params_file)} if takes_file else yaml.safe_load(params_file.read_text()) or {}
        papermill.execute_notebook(str(book), str(out_dir / book.name), parameters=parameters,
                                   cwd=str(book.parent), progress_bar=False)
        named = params_file.relative_to(root) if params_file.is_relative_to(root) else params_file  # a user's own file
        rows.append(dict(notebook=book.name, params=str(named), config_hash=cfg.hash(),
                         seconds=round(time.time() - start, 1), executed=str((out_dir / book.name).relative_to(root))))
    from premem import ledger

    ledger.write_for(params)  # the claims ledger from what the notebooks saved
    return pd.DataFrame(rows)
