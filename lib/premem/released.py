"""Reader for the authors' released per-checkpoint arrays (Llama3-8B on GSM8k and MATH).

Layout (see the logs' README): <root>/<run>/subsample_idxs.npy and <root>/<run>/checkpoint-<step>/
holding train/test answer-type arrays (0 correct, 1 wrong, 2 unparseable; shape (examples, k)) and
train_perplexities.npy. Run names such as gsm8k_orig_6epochs_half_lr2e-05_bs128 carry the dataset
and the training configuration; we parse them only because that is how the authors released them.

One `ckpts/` folder holds both datasets side by side. Each dataset is its own fit, with its own
memorization threshold: a run's dataset is its name's prefix (`gsm8k_`, `math_`), and runs whose
names do not say form one group named after the folder that holds them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from premem.checkpoints import checkpoint_dirs, existing_checkpoint_dirs
from premem.dynamics import RunDynamics, by_dataset
from premem.errors import PremError

# The authors' analysis takes the first of these sample files that exists in a checkpoint.
SAMPLE_PRIORITY = ("types5_seed2_temp0.8", "types50_seed2_temp0.8", "types5_seed2", "types50_seed2",
                   "types10_seed2_temp0.8")
DATA_FRACTIONS = {"full": 1.0, "half": 0.5, "quarter": 0.25}
RUN_NAME = re.compile(r"_(?P<epochs>\d+)epochs_(?P<frac>full|half|quarter)_lr(?P<lr>[0-9.eE+-]+?)_bs\d+$")
ENV_VAR = "PREMEM_RELEASED_LOGS"
# The datasets the authors released, with their memorization thresholds for Llama3-8B
# (log(log(perplexity)) < tau; the released logs' README). A new dataset is one entry here.
AUTHORS_TAU = {"gsm8k": -2.3, "math": -1.7}


def resolve_root(path: str | os.PathLike | None) -> Path:
    """The released-logs folder: the given path, else $PREMEM_RELEASED_LOGS."""
    if path is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            raise PremError(f"no released-logs folder given: pass released_logs or set {ENV_VAR}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PremError(f"released-logs folder not found: {root}")
    return root


def parse_run_name(name: str) -> dict:
    m = RUN_NAME.search(name)
    if not m:
        return dict(lr=None, epochs=None, data_fraction=None)
    return dict(lr=float(m["lr"]), epochs=int(m["epochs"]), data_fraction=DATA_FRACTIONS[m["frac"]])


def dataset_of(run_name: str, folder: str) -> str:
    """The run name's dataset prefix, else `folder`: runs that do not say are grouped by their folder."""
    return next((d for d in AUTHORS_TAU if run_name.startswith(f"{d}_")), folder)


def tau_for(dataset: str, taus: dict | None = None) -> tuple[float, str]:
    """The memorization threshold of a dataset and where it came from: `taus[dataset]`, else the
    authors' own (Llama3-8B) value; no silent guess for a dataset they did not release."""
    if taus and dataset in taus:
        return float(taus[dataset]), "given"
    if dataset in AUTHORS_TAU:
        return AUTHORS_TAU[dataset], "the authors' threshold for Llama3-8B"
    known = ", ".join(f"{d} {t:g}" for d, t in AUTHORS_TAU.items())
    raise PremError(f"no memorization threshold for dataset '{dataset}' (the authors' are {known}): give one "
                    f"(premem fit --tau {dataset}=T, or the released_taus params key)")


def answer_file(ckpt: Path, split: str) -> Path:
    for suffix in SAMPLE_PRIORITY:
        f = ckpt / f"{split}_answer_{suffix}.npy"
        if f.exists():
            return f
    raise PremError(f"no {split} sample file ({', '.join(SAMPLE_PRIORITY)}) in {ckpt}")


def load_array(f: Path) -> np.ndarray:
    """A released .npy array, or one error naming the file (truncated, not an array, pickled)."""
    try:
        return np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise PremError(f"{f}: not a readable .npy array ({str(e).splitlines()[0]})") from None


def subsample_rows(rows: np.ndarray, f: Path) -> np.ndarray:
    """The training examples a run's arrays hold, as indices: the authors save integer indices; a
    boolean mask is taken as the rows it marks (indexed as-is, it would name every example True)."""
    if rows.ndim != 1:
        raise PremError(f"{f}: subsample indices must be one-dimensional, got shape {rows.shape}")
    if rows.dtype == bool:
        return np.flatnonzero(rows)
    if not np.issubdtype(rows.dtype, np.integer) or rows.min(initial=0) < 0:
        raise PremError(f"{f}: subsample indices must be non-negative integers (or a boolean mask), got "
                        f"{rows.dtype} {rows[:5].tolist()}")
    return rows


def accuracy_per_example(types: np.ndarray, f: Path) -> np.ndarray:
    if types.ndim != 2:
        raise PremError(f"{f}: answer types must be (examples, k), got shape {types.shape}")
    # 0 correct, 1 wrong, 2 unparseable; min/max, not unique: these arrays are read by the thousand.
    if not np.issubdtype(types.dtype, np.integer) or types.size and (types.min() < 0 or types.max() > 2):
        odd = np.unique(types[(types != 0) & (types != 1) & (types != 2)])[:5].tolist()
        raise PremError(f"{f}: answer types must be 0 (correct), 1 (wrong) or 2 (unparseable), got {odd}")
    return (types == 0).mean(axis=1)


def read_run(run_dir: str | os.PathLike, group: str | None = None) -> RunDynamics:
    """One run; its dataset is its name's prefix, else `group` (default: the run's own folder name)."""
    run_dir = Path(run_dir)
    ckpts = existing_checkpoint_dirs(run_dir, "run folder")
    idx_file = run_dir / "subsample_idxs.npy"
    rows = subsample_rows(load_array(idx_file), idx_file) if idx_file.exists() else None
    train_acc, ppl, test_acc = [], [], []
    for ckpt in ckpts:
        f = answer_file(ckpt, "train")
        a = accuracy_per_example(load_array(f), f)
        pf = ckpt / "train_perplexities.npy"
        if not pf.exists():
            raise PremError(f"no train_perplexities.npy in {ckpt}")
        p = load_array(pf).astype(float)
        if p.shape != a.shape:
            raise PremError(f"{pf}: perplexity shape {p.shape} does not match answers {f.name} shape {a.shape[:1]}")
        if not np.all(np.isfinite(p)):
            raise PremError(f"{pf}: {int(np.sum(~np.isfinite(p)))} non-finite perplexities")
        if np.any(p < 1):  # exp(mean NLL) with NLL >= 0: below 1 is not a per-token perplexity
            raise PremError(f"{pf}: {int(np.sum(p < 1))} perplexities below 1 (smallest {p.min():.4g}); "
                            "per-token perplexity is exp(mean NLL) >= 1")
        tf = answer_file(ckpt, "test")
        test_acc.append(accuracy_per_example(load_array(tf), tf).mean())
        if rows is not None:
            if rows.max(initial=-1) >= a.shape[0]:
                raise PremError(f"{idx_file}: index {rows.max()} out of range for {a.shape[0]} examples")
            a, p = a[rows], p[rows]
        train_acc.append(a)
        ppl.append(p)
    steps = np.array([int(c.name.split("-")[1]) for c in ckpts])
    config = parse_run_name(run_dir.name)
    # Checkpoints were saved at equal step intervals ending with the last epoch.
    epoch_of_step = None if config["epochs"] is None else np.round(steps / steps[-1] * config["epochs"]).astype(int)
    return RunDynamics(
        run=run_dir.name, dataset=dataset_of(run_dir.name, group or run_dir.name), steps=steps,
        epoch_of_step=epoch_of_step, train_acc=np.stack(train_acc), perplexity=np.stack(ppl),
        test_acc=np.array(test_acc), example_ids=rows if rows is not None else np.arange(train_acc[0].shape[0]), **config,
    )


def read_runs(root: str | os.PathLike | None) -> list[RunDynamics]:
    """Every run under root (sorted by name); a root that is itself one run reads as [that run].
    Runs of every dataset are returned: `dynamics.by_dataset` groups them."""
    root = resolve_root(root)
    if checkpoint_dirs(root):
        return [read_run(root)]
    run_dirs = sorted(d for d in root.iterdir() if d.is_dir() and checkpoint_dirs(d))
    if not run_dirs:
        raise PremError(f"no runs (folders with checkpoint-<step> subfolders) in {root}")
    return [read_run(d, group=root.resolve().name) for d in run_dirs]


def read_datasets(root: str | os.PathLike | None, names: list[str] | None = None,
                  taus: dict | None = None) -> tuple[list[RunDynamics], dict[str, float]]:
    """The runs of every dataset under root (or of `names`, in that order), grouped by dataset, and
    each dataset's threshold ({dataset: tau}, for dynamics.checkpoint_table)."""
    root = resolve_root(root)
    groups = by_dataset(read_runs(root), names)
    unknown = sorted(set(taus or {}) - set(groups))
    if unknown:
        raise PremError(f"released_taus: no runs of dataset {', '.join(map(repr, unknown))} in {root}; "
                        f"datasets: {', '.join(groups)}")
    return [r for runs in groups.values() for r in runs], {d: tau_for(d, taus)[0] for d in groups}
