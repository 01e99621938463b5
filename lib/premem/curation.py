"""Claim 4: data curation guided by pre-memorization accuracy (Algorithm 1 of Kang et al., 2024).

Round i = 1..n: finetune the base model on the originals plus everything collected so far, score
every original at the final checkpoint, select, and collect N_i examples similar to the selected ones
(round-robin over the selection in a seeded random order: a budget smaller than the selection goes to a
uniform sample of it, so the selection as a whole, not its neediest end, is what gets collected). Result
row `round` r is the run trained after r collections; round 0 (originals only) is one run shared by
all strategies. Strategies spend the same budgets:
- premem: final pre-memorization accuracy <= curation_threshold (paper: 0.75); none: all originals;
- iid: every original in a random order (variants of uniformly random originals);
- ifd: highest log PPL(y|x) / log PPL(y) under a model finetuned IFD_EPOCHS epochs on the round's
  data; PPL(y) is conditioned on the tokenizer's BOS alone if it has one, else on "\n";
- most_steps (meta n_steps, else non-empty solution lines); hardest (meta level or difficulty where
  it varies, else steps); low_train_acc, high_loss (final perplexity) and forgetting (Toneva et al.:
  accuracy drops between consecutive checkpoints), from the round's run.
Ranked strategies take the top curation_top_fraction, by default as many as the pre-memorization
rule selects on the same run; ties keep the originals' order. The rules are the entries of
premem.curation_rules.RULES, the sources of similar examples premem.curation_sources, the measures
(data efficiency, paired gaps, the figure) premem.curation_efficiency, a chain's names and collections
premem.curation_chains, the judging of collected data premem.curation_judge.

Runs record what curation reads, since sampling is a large part of a run's cost
(sweep.train_and_record's `recorded`, `recording` and `final_only`): a run whose dynamics feed a
selection that reads its history (`reads_history`: premem, forgetting, and ranked strategies sized by
the pre-memorization rule) records the originals' accuracy and perplexity at every checkpoint (every
epoch, as Algorithm 1 scores, unless curation_max_checkpoints bounds them) and test accuracy at the
last; every other run (a chain's last round, iid's rounds) records its last checkpoint alone, and its
`pre_mem_acc` reads NaN. No run records claim 2's baseline predictors (NaN): no rule reads them.
The rounds are a chain's, not the whole curation's: each step (a run, a selection and collection, a
judging of the collected data) runs in a worker as soon as what it reads exists (`_graph`), so no
core waits for a round's slowest run.
Output: <out_dir>/curation-<hash>/, itself a record folder (`premem fit` reads its final checkpoints), with
curation.parquet, efficiency.parquet, base.json (the base model's own test accuracy: where finetuning
starts from), selections/ and collected/ per (strategy, round, seed), and collected_accuracy.parquet
(how hard each collection was for the run that chose it); a rerun trains and scores nothing twice.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from premem import bars, bases, io, launcher, metrics, record, record_folder, run_grid, sweep, training
from premem import data as data_lib
from premem import model as model_lib
from premem.config import CURATION_KEYS, Params
# The chains, the judging, the rules and the measures live in modules of their own; their names are
# curation's API too.
from premem.curation_chains import (allocate, budgets, chain_of, chain_train, collect, collected_file,  # noqa: F401
                                    read_examples, run_name, write_examples)
from premem.curation_efficiency import (base_test_acc, curation_params, data_efficiency, folder_of,  # noqa: F401
                                        iid_examples_needed, paired_gaps, plot_scaling)
from premem.curation_judge import (JUDGED, add_judged, collected_accuracy, collected_by_judge,  # noqa: F401
                                   example_accuracy, judge_rows, judged, record_base)
from premem.curation_rules import (RULES, check_strategies, forgetting_events, hardness, ifd_scores,  # noqa: F401
                                   n_steps, score_table, select, unconditional_prompt)
from premem.curation_sources import PoolSource, ProceduralSource, Source, source_for  # noqa: F401
from premem.tasks import Example

IFD_EPOCHS = 2  # Li et al.'s IFD uses a briefly finetuned ("pre-experienced") model
# What a curation run records besides the originals' dynamics: the test set at its last checkpoint
# alone (the result is the final test accuracy), and no baseline predictors (no rule reads them).
RECORDING = run_grid.Recording(test_final_only=True, baselines=False)


def ifd_model(cfg: Params, out: Path, spec: run_grid.RunSpec, train: list[Example], base: str):
    """(model, tokenizer) finetuned IFD_EPOCHS epochs on `train`: the run itself when it has that
    many epochs, else a probe finetuned (not recorded) under <out>/ifd/."""
    if spec.epochs == IFD_EPOCHS:
        return training.load_checkpoint(record.final_checkpoint(out, spec.run))
    lm, tok = model_lib.load_configured(cfg, base)
    ckpts = sweep.finetune_on(cfg, lm, tok, train, out / "ifd" / spec.run, spec, IFD_EPOCHS, IFD_EPOCHS)
    return training.load_checkpoint(ckpts[-1]["path"])


def curate(cfg: Params, out: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Run every strategy's rounds for every seed (cached, resumable); returns the curation folder."""
    check_strategies(cfg.curation_strategies)
    launcher.quiet_libraries()
    out = Path(out) if out else folder_of(cfg)
    cfg = curation_params(cfg)
    originals, test, held = data_lib.load_examples(cfg, heldout=True)  # bad input fails before the folder is made
    source = source_for(cfg)
    record_folder.check_target(out, cfg, force=force, extra_keys=CURATION_KEYS)
    with record_folder.locked(out, "premem curate"):
        record_folder.create(out, cfg, force=force, extra_keys=CURATION_KEYS, command="premem curate")
        _curate(cfg, out, (originals, test, held, source), progress)
    return out


# ---- the graph ---------------------------------------------------------------------------------------
# The curation is a graph of steps, each run by a worker as soon as what it reads exists:
#   ("run", s, r, seed)   train and record run r of strategy s's chain (round 0: s None, shared);
#   ("next", s, r, seed)  score the originals on that run, select, collect round r + 1's examples;
#   ("judge", run)        the collected data's accuracy under the run that chose it (collected_accuracy);
#   ("base",)             the base model's own test accuracy.
# So no worker waits for a round's slowest run while another chain could go on (Algorithm 1's rounds
# are a chain's, not the whole curation's), and selecting, collecting and judging run in the workers.

def _graph(cfg: Params) -> dict:
    """{node: (args, after)} in priority order: collecting first (it unlocks runs), then runs by
    round, then what nothing waits for."""
    plan, seeds = {s: budgets(cfg, s) for s in cfg.curation_strategies}, cfg.curation_seeds
    nexts, runs, judges = {}, {}, {}
    for seed in seeds:
        runs[("run", None, 0, seed)] = ()
        for s, b in plan.items():
            for r in range(len(b) + 1):
                made_by = ("run", s if r else None, r, seed)
                if r:
                    runs[made_by] = (("next", s, r - 1, seed),)
                if r < len(b):
                    nexts[("next", s, r, seed)] = (made_by,)
                    judge = ("judge", run_name(s, r, seed))
                    judges[judge] = judges.get(judge, ()) + (("next", s, r, seed),)
    order = sorted(nexts, key=lambda n: n[2]) + sorted(runs, key=lambda n: n[2]) + [("base",)] + list(judges)
    after = nexts | runs | judges | {("base",): ()}
    return {node: ((node,), after[node]) for node in order}


def _left(out: Path, graph: dict) -> dict:
    """The graph without the steps an earlier curation finished (a cached one starts no worker)."""
    seen = judged(out)

    def done(node, after):
        kind, *key = node
        if kind == "run":
            return record.is_done(record.run_dir(out, run_name(*key)))
        if kind == "next":
            return collected_file(out, key[0], key[1] + 1, key[2]).exists()
        if kind == "judge":
            return all(done(n, ()) and (n[1], n[2] + 1, n[3]) in seen for n in after)
        return (out / "base.json").exists()

    left = {node: step for node, step in graph.items() if not done(node, step[1])}
    return {node: (args, tuple(a for a in after if a in left)) for node, (args, after) in left.items()}


def _spec(cfg: Params, s: str | None, r: int, seed: int) -> run_grid.RunSpec:
    # Deterministic names, for people: the values live in runs.parquet.
    return run_grid.RunSpec(run_name(s, r, seed), cfg.curation_lr, cfg.curation_epochs, 1.0, seed)


def _final_only(cfg: Params, s: str | None, r: int) -> bool:
    plan = {x: budgets(cfg, x) for x in cfg.curation_strategies}
    return not reads_history(plan, s, r, cfg.curation_top_fraction)


def _step(cfg_json: str, out: str, base: str, data: tuple, node: tuple):
    """One node of the graph (in a worker process, or here); a judge returns its rows."""
    cfg, out, (originals, test, held, source) = Params.model_validate_json(cfg_json), Path(out), data
    kind, *key = node
    if kind == "run":
        s, r, seed = key
        sweep.train_and_record(cfg, _spec(cfg, s, r, seed), chain_train(out, originals, s, r, seed), test, out,
                               base, held, recorded=originals, recording=RECORDING,
                               final_only=_final_only(cfg, s, r))
    elif kind == "next":
        s, r, seed = key
        spec, history = _spec(cfg, s, r, seed), not _final_only(cfg, s, r)  # _left skipped it if collected
        d = record.read_run_parts(out, spec.run)
        tau = metrics.chosen_tau(cfg, [d])[0]
        write_examples(collected_file(out, s, r + 1, seed),
                       _next_round(cfg, out, base, source, s, r, seed, budgets(cfg, s)[r], d, tau, spec,
                                   chain_train(out, originals, s, r, seed), originals, held + test, history=history))
    elif kind == "judge":
        items = collected_by_judge(out, judged(out)).get(key[0])
        return judge_rows(cfg, out, key[0], items) if items else []
    else:
        record_base(cfg, out, base, test)


def _curate(cfg: Params, out: Path, data: tuple, progress: bool) -> None:
    base = bases.base_model_path(cfg, progress=progress)
    whole, cfg_json = _graph(cfg), cfg.model_dump_json()
    graph, runs = _left(out, whole), [n for n in whole if n[0] == "run"]  # the bar counts every run
    every = bars.saves(cfg.curation_epochs, sweep.save_every(cfg, cfg.curation_epochs))
    planned = sum(1 if _final_only(cfg, s, r) else every for _, s, r, _ in runs)
    bar = tqdm(total=planned, desc="curation", unit="checkpoint", disable=not progress)

    def done(node, result):
        if node[0] == "judge" and result:
            add_judged(out, result)
        if node[0] == "run":
            bar.set_postfix_str(f"{run_name(*node[1:])} done")

    with bars.counting(bar, lambda: bars.recorded_checkpoints(out, [run_name(*n[1:]) for n in runs])):
        if cfg.launcher == "local" and launcher.world_size() == 1:
            launcher.run_graph(_step, {n: ((cfg_json, str(out), base, data, n), after)
                                       for n, (_, after) in graph.items()}, cfg.workers, done)
        else:  # each launcher's runs through the sweep's jobs, a level of the graph at a time
            _curate_by_levels(cfg, out, base, data, graph, done)
    bar.close()
    record.finish(out)
    table = _table(cfg, out, data[0])
    io.write_parquet(out / "curation.parquet", table)
    if "iid" in cfg.curation_strategies:
        _write_efficiency(out, table)


def _curate_by_levels(cfg: Params, out: Path, base: str, data: tuple, graph: dict, done) -> None:
    """The graph under a launcher of jobs (Slurm) or a multi-process launch: every ready run as one
    array of jobs (sweep.run_jobs), then every other ready step here, until none is left."""
    originals, test, held, _ = data
    finished, cfg_json = set(), cfg.model_dump_json()
    while len(finished) < len(graph):
        ready = [n for n, (_, after) in graph.items() if n not in finished and finished.issuperset(after)]
        runs = [n for n in ready if n[0] == "run"]
        if runs:
            sweep.run_jobs(cfg, {_spec(cfg, s, r, seed): chain_train(out, originals, s, r, seed)
                                 for _, s, r, seed in runs},
                           test, held, out, base, recorded=originals, recording=RECORDING,
                           final_only={run_name(s, r, seed) for _, s, r, seed in runs if _final_only(cfg, s, r)})
        for node in ready:
            done(node, None if node[0] == "run" else _step(cfg_json, str(out), base, data, node))
            finished.add(node)


def _table(cfg: Params, out: Path, originals: list[Example]) -> pd.DataFrame:
    """curation.parquet: a row per (strategy, round, seed), read from the finished record."""
    dyns, rows = {d.run: d for d in record.read_runs(out)}, []
    for s in cfg.curation_strategies:
        for seed in cfg.curation_seeds:
            for r in range(len(budgets(cfg, s)) + 1):
                d = dyns[run_name(s, r, seed)]
                tau = metrics.chosen_tau(cfg, [d])[0]
                pre = np.nan if _final_only(cfg, s, r) else float(d.pre_mem_acc(tau)[-1])  # one checkpoint: no history
                n = len(chain_train(out, originals, s, r, seed))
                rows.append(dict(strategy=s, round=r, seed=seed, n_examples=n, n_new=n - len(originals),
                                 test_acc=float(d.test_acc[-1]), pre_mem_acc=pre, run=run_name(s, r, seed)))
    return pd.DataFrame(rows).sort_values(["strategy", "round", "seed"], kind="stable").reset_index(drop=True)


def _write_efficiency(out: Path, table: pd.DataFrame) -> None:
    """efficiency.parquet from the curation table; its bootstrap (tens of seconds) is redone only when
    the table changed, which a hash of it beside the file tells."""
    key = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).values.tobytes()).hexdigest()[:16]
    stamp = out / "efficiency.key"
    if (out / "efficiency.parquet").exists() and stamp.is_file() and stamp.read_text().strip() == key:
        return
    io.write_parquet(out / "efficiency.parquet", data_efficiency(table))
    io.write_text(stamp, key + "\n")


def reads_history(plan: dict, s: str, r: int, top_fraction: float | None) -> bool:
    """Whether run `r` of strategy `s`'s chain feeds a selection that reads all its checkpoints:
    premem's and forgetting's scores do, and so does every ranked strategy without a top_fraction,
    which takes as many originals as the pre-memorization rule selects on the same run. Round 0
    (shared) does when any strategy's first selection does."""
    def reads(x):
        return RULES[x].reads_history or (RULES[x].picks == "top" and top_fraction is None)

    return any(reads(x) for x in plan) if r == 0 else r < len(plan[s]) and reads(s)


def _next_round(cfg, out, base, source, s, r, seed, budget, d, tau, spec, train, originals, others,
                history=True):
    """Score the originals on run `d`, select, allocate `budget` round-robin over the selection's
    random order, collect; the selection is kept under <out>/selections/ (its pre_mem_acc NaN when
    `d` recorded its last checkpoint alone, history=False)."""
    ifd = None
    if RULES[s].needs_probe:
        lm, tok = ifd_model(cfg, out, spec, train, base)
        ifd = ifd_scores(lm, tok, originals, cfg.prompt_template, cfg.target_template, cfg.perplexity_batch_size)
    scores = score_table(s, d, originals, tau, ifd)
    if not history:
        scores["pre_mem_acc"] = np.nan
    ids, fallback = select(scores, s, cfg.curation_threshold, cfg.curation_top_fraction, seed=seed * 1009 + r)
    by_id = {ex.id: ex for ex in originals}
    used = pd.Series([e.meta.get("similar_to") for e in train]).value_counts()
    caps = {i: None if source.capacity(by_id[i]) is None else source.capacity(by_id[i]) - used.get(i, 0) for i in ids}
    counts = allocate(ids, budget, caps)
    got = collect(source, by_id, counts, {e.question for e in train + others}, seed)
    io.write_parquet(out / "selections" / f"{run_name(s, r + 1, seed)}.parquet", scores.assign(
        selected=scores.example_id.isin(ids), n_new=scores.example_id.map(counts).fillna(0).astype(int),
        fallback=fallback, tau=tau))
    return got


