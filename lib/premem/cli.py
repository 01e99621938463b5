"""Command line.

premem pretrain     pretrain (or find) the embedded base model; --ship copies it into models/
premem sweep        finetune over a params grid, recording samples and perplexities per checkpoint
premem fit PATH     relate pre-memorization accuracy to test accuracy over a folder of runs, per dataset
premem record DIR   record the checkpoint-* folders any trainer saved in DIR (your own run, your own data)
premem examples PATH  one row per training example: pre-mem accuracy, when it was first memorised, ...
premem reproduce    run the numbered notebooks in order (papermill), figures into figures/
premem ledger       the claims ledger (figures/claims.md) from the cached records
premem curate       claim 4's curation rounds; premem perturb: claim 3's perturbed queries
premem ship         copy a finished record's tables (not its checkpoints) into records/, which the repository carries

The commands that run a stage (record, pretrain, sweep, perturb, curate, reproduce, ledger) import
it when they run: torch, transformers and papermill take seconds to import, and `premem --help`, a
bad flag or a bad params file answer at once. Every other import is at the top.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import shutil
import signal
import sys
import threading
from pathlib import Path

import pandas as pd

from premem import data as data_lib
from premem import io, record, record_folder, shipped
from premem.config import load_params, project_root
from premem.dynamics import by_dataset, example_table, pick_run
from premem.errors import PremError, terminated
from premem.fitting import dataset_taus, fit_datasets, load_runs, print_fit


def tau_flags(args) -> tuple[dict[str, float], float | None]:
    """(--tau NAME=T by name, the one --tau T for every dataset or None)."""
    by_name = dict(t for t in args.tau if isinstance(t, tuple))
    everywhere = [t for t in args.tau if not isinstance(t, tuple)]
    if len(everywhere) > 1:
        raise PremError(f"--tau given {len(everywhere)} times without a dataset name: give one, or NAME=T each")
    if args.tau and args.tau_rule:
        raise PremError("--tau and --tau-rule both given: a threshold is either fixed or calibrated")
    return by_name, everywhere[0] if everywhere else None


def cmd_fit(args) -> int:
    summaries = fit_datasets(args.path, *tau_flags(args), [args.dataset] if args.dataset else None,
                             args.tau_rule, args.tau_quantile)
    for i, summary in enumerate(summaries):
        if args.json:  # JSON Lines: one object per dataset
            print(json.dumps(summary, default=float))
            continue
        if i:
            print()
        print_fit(summary)
    return 0


def tau_arg(text: str):
    """`T` (every dataset) or `NAME=T` (one dataset); a finite number either way."""
    name, _, value = text.rpartition("=")
    try:
        tau = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number T or NAME=T") from None
    if not math.isfinite(tau):
        raise argparse.ArgumentTypeError(f"{text!r}: tau must be a finite number")
    return (name, tau) if name else tau


def cmd_record(args) -> int:
    from premem import recorder

    cfg = data_lib.with_own_data(load_params(args.params), args.data, args.test, args.heldout)
    # Every input is read and checked before any model is loaded (record_saved checks the checkpoints).
    splits = {s: data_lib.load_own_examples(cfg, cfg.data_files.get(s), s) for s in ("train", "test", "heldout")}
    data_lib.check_splits(splits["train"], splits["test"], splits["heldout"])
    out = Path(args.out) if args.out else record.default_dir(cfg)
    print(recorder.record_saved(cfg, args.checkpoints_dir, out, splits["train"], splits["test"], splits["heldout"],
                                select=args.checkpoints, base=args.base, run=args.run, fraction=args.fraction,
                                baselines=args.baselines, progress=not args.quiet))
    return 0


def cmd_examples(args) -> int:
    io.check_table_suffix(args.out)
    own = record.read_config(args.path) if record.is_record_dir(args.path) else None
    record_folder.check_output(args.out, own, args.path)
    if args.below is not None and Path(args.out).suffix != ".jsonl":
        raise PremError(f"--below writes the training rows themselves: --out must end in .jsonl, got {args.out}")
    runs = load_runs(args.path)
    runs = [pick_run(runs, args.run)] if args.run else runs
    groups = by_dataset(runs)
    chosen = dataset_taus(args.path, groups, *tau_flags(args), args.tau_rule, args.tau_quantile)
    table = pd.concat([example_table(r, chosen[d][0]) for d, g in groups.items() for r in g], ignore_index=True)
    if args.below is None:
        io.write_table(args.out, table)
        print(f"{args.out}: {len(table)} examples of {len(runs)} runs")
        return 0
    if len(runs) != 1:
        raise PremError(f"--below picks the examples of one run; {len(runs)} runs here: choose one with --run")
    picked = table.loc[table.pre_mem_acc <= args.below, "example_id"].astype(str).tolist()
    n = data_lib.write_training_rows(args.path, picked, args.out)
    print(f"{args.out}: {n} of {len(table)} training examples with pre-memorization accuracy <= {args.below:g}")
    return 0


def cmd_pretrain(args) -> int:
    from premem.bases import SHIPPED_MODELS, base_model_path

    cfg = load_params(args.params)
    if cfg.base_model != "embedded":
        raise PremError(f"{args.params}: base_model is {cfg.base_model!r}; pretrain builds only 'embedded'")
    path = Path(base_model_path(cfg, progress=not args.quiet))
    if args.ship and path.parent != project_root() / SHIPPED_MODELS:
        target = project_root() / SHIPPED_MODELS / path.name
        shutil.copytree(path, target, dirs_exist_ok=True)
        path = target
    print(path)
    return 0


def cmd_curate(args) -> int:
    from premem import curation

    print(curation.curate(load_params(args.params), force=args.force, progress=not args.quiet))
    return 0


def cmd_perturb(args) -> int:
    from premem import claims, perturb

    s = claims.open_sweep(load_params(args.params))
    table = perturb.sample_perturbations(s.record_dir, s.cfg, tau=s.tau)
    print(f"{s.record_dir}: {table.perturbation.nunique()} perturbations of {table.example_id.nunique()} examples")
    return 0


def cmd_sweep(args) -> int:
    from premem.sweep import sweep

    out = sweep(load_params(args.params), out=args.out, force=args.force, progress=not args.quiet)
    print(out)
    return 0


def cmd_ship(args) -> int:
    cfg = load_params(args.params)
    print(shipped.ship(record.default_dir(cfg)))
    return 0


def cmd_reproduce(args) -> int:
    from premem.reproduce import reproduce

    summary = reproduce(params=args.params, only=args.only, store=args.store)
    print(summary.to_string(index=False))
    return 0


def cmd_ledger(args) -> int:
    from premem.ledger import write_for

    out = write_for(args.params)
    print(out.read_text())
    return 0


def tau_options(p) -> None:
    p.add_argument("--tau", type=tau_arg, action="append", default=[], metavar="[NAME=]T",
                   help="memorization threshold on log(log(perplexity)): T for every dataset, NAME=T for one "
                        "(repeatable); default: a record's own params, else the authors' (gsm8k -2.3, math -1.7)")
    p.add_argument("--tau-rule", choices=["fixed", "heldout"], help="heldout: calibrate tau on the record's held-out "
                   "examples (no test labels) whatever its params say")
    p.add_argument("--tau-quantile", type=float, help="the held-out quantile the heldout rule takes (default: the "
                   "record's tau_quantile, 0.05)")


class Parser(argparse.ArgumentParser):
    """Bad flags get the one-line `premem: error: ...` of every other bad input (argparse would
    print the usage first), with exit 2."""

    def error(self, message):
        command = self.prog.removeprefix("premem").strip()  # "fit", or "" for premem itself
        self.exit(2, f"premem: error: {command + ': ' if command else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="premem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit test accuracy on pre-memorization accuracy over a folder of runs")
    p.add_argument("path", help="folder of runs: premem sweep output or the authors' released ckpts/")
    p.add_argument("--dataset", metavar="NAME", help="fit only this dataset (run-name prefix, e.g. gsm8k or math)")
    tau_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per dataset, a line each")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("record", help="record the checkpoint-* folders any trainer saved (your own run)")
    p.add_argument("checkpoints_dir", help="the trainer's output_dir, holding checkpoint-<step> folders")
    p.add_argument("--data", required=True, help="the training data, JSON Lines (fields: the params' task_options)")
    p.add_argument("--test", help="test data (JSON Lines): test accuracy at every checkpoint")
    p.add_argument("--heldout", help="training-distribution data never trained on (JSON Lines): calibrates tau")
    p.add_argument("--params", required=True, help="params YAML: the recording keys (k, templates, task_options...)")
    p.add_argument("--out", help="record folder (default <out_dir>/<name>-<config hash>); another run adds to it")
    p.add_argument("--checkpoints", default="all", help="all (default), steps 100,200, or a step range 100-300")
    p.add_argument("--base", help="the model training started from: adapters go on it (default: their "
                                  "adapter_config's base), full models get param_distance from it")
    p.add_argument("--run", help="the run's name in the record (default: the checkpoints folder's name)")
    p.add_argument("--fraction", type=float, default=1.0, help="record a seeded random fraction of the training examples")
    p.add_argument("--baselines", action="store_true", help="also the baseline predictors param_distance and "
                                                            "grad_variance (a backward pass per minibatch)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_record)
    p = sub.add_parser("examples", help="one row per training example: pre-mem accuracy, first memorised, ...")
    p.add_argument("path", help="a record folder (or the authors' released ckpts/ or one run of it)")
    p.add_argument("--out", required=True, help="the table: .parquet, .csv or .jsonl")
    p.add_argument("--run", help="only this run")
    tau_options(p)
    p.add_argument("--below", type=float, metavar="T", help="write instead the training rows (JSON Lines, your own "
                   "data's lines as they are) whose final pre-memorization accuracy is <= T: what Algorithm 1 "
                   "collects more of")
    p.set_defaults(func=cmd_examples)
    p = sub.add_parser("pretrain", help="pretrain the embedded base model of a params file (cached)")
    p.add_argument("--params", required=True, help="params YAML file with base_model: embedded")
    p.add_argument("--ship", action="store_true", help="copy it into models/, which the repository carries")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("sweep", help="finetune over the params grid and record every checkpoint")
    p.add_argument("--params", required=True, help="params YAML file, e.g. params/tiny.yaml")
    p.add_argument("--out", help="record folder (default <out_dir>/<name>-<config hash>)")
    p.add_argument("--force", action="store_true",
                   help="start an existing record of another config afresh (deletes only what premem wrote there)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("curate", help="run claim 4's curation rounds of a params file (cached, resumable)")
    p.add_argument("--params", required=True, help="params YAML file, e.g. params/tiny.yaml")
    p.add_argument("--force", action="store_true",
                   help="start an existing curation of another config afresh (deletes only what premem wrote there)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_curate)
    p = sub.add_parser("perturb", help="sample claim 3's perturbed training queries of a swept params file (cached)")
    p.add_argument("--params", required=True, help="params YAML file, e.g. params/tiny.yaml (swept first)")
    p.set_defaults(func=cmd_perturb)
    p = sub.add_parser("ship", help="copy a params file's finished record (tables and caches, no checkpoints) into "
                       "records/, where the ledger and notebooks read it on any machine")
    p.add_argument("--params", required=True, help="params YAML file whose record (<out_dir>/<name>-<hash>) to ship")
    p.set_defaults(func=cmd_ship)
    p = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill")
    p.add_argument("--params", help="params file for the live notebooks (default params/tiny.yaml)")
    p.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. 01 03")
    p.add_argument("--store", action="store_true",
                   help="keep the executed notebooks as the stored ones (default params), or as the nbval "
                        "references of --params (notebooks/outputs/<name>/)")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("ledger", help="write figures/claims.md (and the README's copy) from the cached records")
    p.add_argument("--params", help="params file of the live results (default params/tiny.yaml)")
    p.set_defaults(func=cmd_ledger)
    return parser


# A path premem cannot use for what the user named it for (a read-only or full disk, a name too long,
# a file where a folder goes): the machine's state or the user's path, not a bug: one line saying where.
PATH_ERRORS = ("EACCES", "EPERM", "ENOSPC", "EROFS", "EDQUOT", "ENAMETOOLONG", "ENOTDIR", "EISDIR", "EEXIST")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    try:
        return args.func(args)
    except PremError as e:
        print(f"premem: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if errno.errorcode.get(e.errno) not in PATH_ERRORS:
            raise
        print(f"premem: error: cannot use {e.filename or 'a path'}: {e.strerror}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
