"""The runs a params file names: an explicit `runs` list, or the grid lrs x epochs x data_fractions
x seeds, each a `RunSpec` named for people (the values live in runs.parquet); and the nested subset
of training examples a run with a data fraction trains on. Light on purpose: what a notebook asks
before it decides whether a sweep must run at all.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from premem.config import Params
from premem.errors import PremError


@dataclass(frozen=True)
class RunSpec:
    run: str
    lr: float
    epochs: int
    data_fraction: float
    seed: int


@dataclass(frozen=True)
class Recording:
    """What a run's checkpoints record beyond its training examples' accuracy and perplexity: one
    value for a whole call, so a new choice is a field here, not a flag through every signature.
    The sweep records everything (`Recording()`); curation's runs take less (premem.curation)."""
    test_final_only: bool = False  # the test set sampled at the last checkpoint alone (earlier ones NaN)
    baselines: bool = True  # claim 2's predictors (param_distance, grad_variance: a backward pass per minibatch)

    def samples_test(self, epoch: int, epochs: int) -> bool:
        """Whether the checkpoint at `epoch` of a run of `epochs` samples the test set."""
        return epoch == epochs or not self.test_final_only


def grid(cfg: Params) -> list[RunSpec]:
    """The runs of a params file: its explicit `runs` list, else lrs x epochs x data_fractions x seeds."""
    if cfg.runs is not None:
        points = [(r.lr, r.epochs, r.data_fraction, r.seed) for r in cfg.runs]
    elif not cfg.seeds:
        raise PremError("seeds: the grid is empty; give at least one seed")
    else:
        points = itertools.product(cfg.lrs, cfg.epochs, cfg.data_fractions, cfg.seeds)
    specs, seen = [], set()
    for lr, epochs, frac, seed in points:
        if (lr, epochs, frac, seed) in seen:
            raise PremError(f"runs: lr {lr:g}, epochs {epochs}, data_fraction {frac:g}, seed {seed} is listed twice")
        seen.add((lr, epochs, frac, seed))
        if not 0 < frac <= 1:
            raise PremError(f"data_fractions: {frac} is not in (0, 1]")
        # The name is for people; the values live in runs.parquet and are never parsed back.
        specs.append(RunSpec(f"lr{lr:g}_ep{epochs}_frac{frac:g}_seed{seed}", lr, epochs, frac, seed))
    return specs


def train_subset(train, spec: RunSpec):
    """Nested subsets: the first round(f * n) of one fixed permutation, so quarter is inside half."""
    order = np.random.default_rng(12345).permutation(len(train))
    m = max(1, int(round(spec.data_fraction * len(train))))
    return [train[i] for i in sorted(order[:m])]
