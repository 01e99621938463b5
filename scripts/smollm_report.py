"""The SmolLM2-135M record's claims 1 and tau with their intervals (docs/findings.md, docs/smollm.md).

    .venv/bin/python scripts/smollm_report.py > docs/smollm_report.json

Reads the record of params/smollm2-135m_arith.yaml (made here, else the one records/ ships: no
training, seconds). For each predictor of claim 1 (pre-mem accuracy at the record's label-free tau,
final train accuracy, train loss): R² over the 18 checkpoints, its Fisher-z 95% interval (as if the
points were independent: optimistic, a run's checkpoints are not), and a bootstrap over runs (the 6
runs resampled with replacement, 2,000 draws, 2.5% and 97.5% quantiles), which keeps a run's
checkpoints together; then R² against tau, the fits at each run's final checkpoint, and per
checkpoint the median log(log(perplexity)) of the training and held-out gold solutions with the
share of training examples memorised (below tau).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from premem import claims, metrics, predictors
from premem.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def fisher_z(r2: float, n: int) -> list[float]:
    r = np.sqrt(max(r2, 0.0))
    half = 1.96 / np.sqrt(n - 3)
    return [round(float(np.tanh(np.arctanh(r) + s * half) ** 2), 3) for s in (-1, 1)] if r < 1 else [1.0, 1.0]


def run_bootstrap(table, x: str, draws: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    runs = table.run.unique()
    values = []
    for _ in range(draws):
        pick = rng.choice(runs, size=len(runs), replace=True)
        sample = table.set_index("run").loc[pick]
        if sample[x].nunique() > 1 and sample.test_acc.nunique() > 1:
            values.append(metrics.fit_predictor(sample[x], sample.test_acc).r2)
    return [round(float(q), 3) for q in np.quantile(values, [0.025, 0.975])]


def loglog_by_checkpoint(s) -> list[dict]:
    rows = []
    for r in s.runs:
        for j, step in enumerate(r.steps):
            train = np.log(np.log(r.perplexity[j]))
            held = np.log(np.log(r.heldout_perplexity[j])) if r.heldout_perplexity is not None else np.array([np.nan])
            rows.append(dict(run=r.run, step=int(step), train_loglog_median=round(float(np.median(train)), 3),
                             heldout_loglog_median=round(float(np.median(held)), 3),
                             memorised=round(float(np.mean(train < s.tau)), 3),
                             train_acc=round(float(r.train_acc[j].mean()), 3), test_acc=round(float(r.test_acc[j]), 3)))
    return rows


def main() -> None:
    cfg = load_params(ROOT / "params" / "smollm2-135m_arith.yaml")
    s = claims.open_sweep(cfg)
    table = predictors.predictor_table(s.runs, s.tau)
    names = ["pre_mem_acc", "train_acc", "train_loss"]
    fits = predictors.compare(table, names).set_index("predictor")
    final = predictors.compare(table[table.final], names).set_index("predictor")
    out = dict(
        record=f"{cfg.name} @ {cfg.hash()}", record_dir=str(s.record_dir.relative_to(ROOT)), tau=round(s.tau, 3),
        checkpoints=len(table), runs=int(table.run.nunique()),
        test_acc=dict(min=round(float(table.test_acc.min()), 3), max=round(float(table.test_acc.max()), 3)),
        r2={p: dict(r2=round(float(fits.r2[p]), 3), fisher_z_95=fisher_z(float(fits.r2[p]), len(table)),
                    run_bootstrap_95=run_bootstrap(table, p)) for p in names},
        r2_final_checkpoints={p: round(float(final.r2[p]), 3) for p in names},
        r2_by_tau=[dict(tau=round(float(t), 3), r2=round(float(r), 3))
                   for t, r in claims.threshold(s).tables["r2_by_tau"][["tau", "r2"]].itertuples(index=False)],
        by_checkpoint=loglog_by_checkpoint(s),
    )
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
