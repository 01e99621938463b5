"""Command line.

premem pretrain     pretrain (or find) the embedded base model; --ship copies it into models/
premem sweep        finetune over a params grid, recording samples and perplexities per checkpoint
premem fit PATH     relate pre-memorization accuracy to test accuracy over a folder of runs
premem reproduce    run the numbered notebooks in order (papermill), figures into figures/
premem ledger       the claims ledger (figures/claims.md) from the notebooks' saved results
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from premem.errors import PremError


def load_runs(path: str | Path):
    """Runs from a folder of premem sweep records, or of the authors' released checkpoints."""
    from premem import record, released

    path = Path(path)
    if not path.is_dir():
        raise PremError(f"runs folder not found: {path}")
    return record.read_runs(path) if record.is_record_dir(path) else released.read_runs(path)


def fit_summary(runs, tau: float) -> dict:
    """The `premem fit --json` object: the fit over every checkpoint of every run, and the runs."""
    from premem import metrics
    from premem.dynamics import checkpoint_table

    table = checkpoint_table(runs, tau)
    pre = metrics.fit_predictor(table.pre_mem_acc, table.test_acc)
    train = metrics.fit_predictor(table.train_acc, table.test_acc)
    out = dict(
        tau=tau, r2=pre.r2, r2_identity=pre.r2_identity, slope=pre.slope, intercept=pre.intercept,
        slope_ci=list(pre.slope_ci), intercept_ci=list(pre.intercept_ci), n_points=pre.n_points,
        train_acc_r2=train.r2, runs=[],
    )
    for run, g in table.groupby("run", sort=False):
        first = g.iloc[0]
        out["runs"].append(dict(
            run=run, lr=first.lr, epochs=None if first.epochs is None else int(first.epochs),
            data_fraction=first.data_fraction,
            checkpoints=g[["step", "pre_mem_acc", "train_acc", "test_acc", "memorized_frac"]].to_dict("records"),
        ))
    return out


def print_fit(summary: dict) -> None:
    print(f"{'run':<48} {'step':>6} {'pre_mem':>8} {'train':>7} {'test':>7} {'memorized':>9}")
    for r in summary["runs"]:
        for c in r["checkpoints"]:
            print(f"{r['run']:<48} {c['step']:>6} {c['pre_mem_acc']:>8.3f} {c['train_acc']:>7.3f} "
                  f"{c['test_acc']:>7.3f} {c['memorized_frac']:>9.3f}")
    s = summary
    print(f"\ntau {s['tau']}: test ~ pre-mem accuracy over {s['n_points']} checkpoints: R² {s['r2']:.3f}, "
          f"slope {s['slope']:.3f} [{s['slope_ci'][0]:.3f}, {s['slope_ci'][1]:.3f}], "
          f"intercept {s['intercept']:.3f}, R² vs y=x {s['r2_identity']:.3f}")
    print(f"test ~ train accuracy: R² {s['train_acc_r2']:.3f}")


def cmd_fit(args) -> int:
    summary = fit_summary(load_runs(args.path), args.tau)
    if args.json:
        json.dump(summary, sys.stdout, indent=1, default=float)
        print()
    else:
        print_fit(summary)
    return 0


def cmd_pretrain(args) -> int:
    import shutil

    from premem.config import load_params, project_root
    from premem.sweep import SHIPPED_MODELS, base_model_path

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


def cmd_sweep(args) -> int:
    from premem.config import load_params
    from premem.sweep import sweep

    out = sweep(load_params(args.params), out=args.out, force=args.force, progress=not args.quiet)
    print(out)
    return 0


def cmd_reproduce(args) -> int:
    from premem.notebooks import reproduce

    summary = reproduce(params=args.params, only=args.only)
    print(summary.to_string(index=False))
    return 0


def cmd_ledger(args) -> int:
    from premem.ledger import write_for

    out = write_for(args.params)
    print(out.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="premem", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit test accuracy on pre-memorization accuracy over a folder of runs")
    p.add_argument("path", help="folder of runs: premem sweep output or the authors' released ckpts/")
    p.add_argument("--tau", type=float, default=-2.3, help="memorization threshold on log(log(perplexity))")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("pretrain", help="pretrain the embedded base model of a params file (cached)")
    p.add_argument("--params", required=True, help="params YAML file with base_model: embedded")
    p.add_argument("--ship", action="store_true", help="copy it into models/, which the repository carries")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("sweep", help="finetune over the params grid and record every checkpoint")
    p.add_argument("--params", required=True, help="params YAML file, e.g. params/tiny.yaml")
    p.add_argument("--out", help="record folder (default <out_dir>/<name>-<config hash>)")
    p.add_argument("--force", action="store_true", help="discard an existing record folder and redo everything")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill")
    p.add_argument("--params", help="params file for the live notebooks (default params/tiny.yaml)")
    p.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. 01 03")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("ledger", help="write figures/claims.md (and the README's copy) from the saved results")
    p.add_argument("--params", help="params file of the live results (default params/tiny.yaml)")
    p.set_defaults(func=cmd_ledger)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PremError as e:
        print(f"premem: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
