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
rule selects on the same run; ties keep the originals' order.

Runs record what curation reads, since sampling is a large part of a run's cost
(sweep.train_and_record's `recorded`, `test_final_only`, `final_only`): a run whose dynamics feed a
selection that reads its history (`reads_history`: premem, forgetting, and ranked strategies sized by
the pre-memorization rule) records the originals' accuracy and perplexity at every checkpoint (every
epoch, as Algorithm 1 scores, unless curation_max_checkpoints bounds them) and test accuracy at the
last; every other run (a chain's last round, iid's rounds) records its last checkpoint alone, and its
`pre_mem_acc` reads NaN.
Output: <out_dir>/curation-<hash>/, itself a record folder (`premem fit` reads its final checkpoints), with
curation.parquet, efficiency.parquet, base.json (the base model's own test accuracy: where finetuning
starts from), and selections/ and collected/ per (strategy, round, seed); `collected_accuracy` adds
collected_accuracy.parquet (how hard each collection was for the run that chose it);
a rerun trains and scores nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from premem import io, metrics, record, sweep, tasks
from premem.config import CURATION_KEYS, Params
from premem.errors import PremError
from premem.grading import extract_answer
from premem.tasks import Example

STRATEGIES = ("premem", "iid", "ifd", "most_steps", "hardest", "low_train_acc", "high_loss", "forgetting")
IFD_EPOCHS = 2  # Li et al.'s IFD uses a briefly finetuned ("pre-experienced") model
EVERY_CHECKPOINT = ("premem", "forgetting")  # scores that read every checkpoint of the round's run


class Source(Protocol):
    """Where similar examples come from: `similar(ex, n, seed)` gives n examples like `ex`, the first
    n of one deterministic stream per (ex, seed); `capacity(ex)` how many exist (None: unlimited)."""

    def similar(self, ex: Example, n: int, seed: int) -> list[Example]: ...

    def capacity(self, ex: Example) -> int | None: ...


class ProceduralSource:
    """arith and gsm_symbolic: same template and steps, fresh numbers and names (tasks.similar_examples)."""

    def similar(self, ex, n, seed):
        return tasks.similar_examples(ex, n, seed) if n > 0 else []

    def capacity(self, ex):
        return None


class PoolSource:
    """Variants written by someone else (GSM8k, MATH): a JSONL file of {source_id, question, solution},
    source_id being the premem id of the original (e.g. "gsm8k-train-17"), the solution ending in
    "#### <answer>"."""

    def __init__(self, path: str | Path, task: str = "pool"):
        self.path, self.variants = Path(path), {}
        if not self.path.is_file():
            raise PremError(f"pool_file not found: {self.path}")
        for line_no, line in enumerate(self.path.read_text().splitlines(), start=1):
            where = f"{self.path}:{line_no}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PremError(f"{where}: not valid JSON ({e.msg})") from None
            bad = [k for k in ("source_id", "question", "solution")
                   if not isinstance(row, dict) or not isinstance(row.get(k), str) or not row[k].strip()]
            if bad:
                raise PremError(f"{where}: needs non-empty string fields {bad}")
            if (answer := extract_answer(row["solution"])) is None:
                raise PremError(f"{where}: solution has no '#### <answer>' line")
            q, sid = row["question"], row["source_id"]
            self.variants.setdefault(sid, []).append(Example(
                f"{task}-var-{hashlib.sha256(q.encode()).hexdigest()[:12]}", q, row["solution"], answer,
                dict(task=task, split="train", similar_to=sid, pool_line=line_no)))

    def similar(self, ex, n, seed):
        pool = self.variants.get(ex.id, [])
        if n > len(pool):
            raise PremError(f"{self.path}: {len(pool)} variants of {ex.id}, asked for {n}")
        order = random.Random(f"pool|{ex.id}|{seed}").sample(range(len(pool)), len(pool))
        return [pool[i] for i in order[:n]]

    def capacity(self, ex):
        return len(self.variants.get(ex.id, []))


def source_for(cfg: Params) -> Source:
    if cfg.pool_file:
        return PoolSource(cfg.path("pool_file"), cfg.task)
    if cfg.task in tasks.SPLITS:
        return ProceduralSource()
    raise PremError(f"task '{cfg.task}' has no procedural variants: set pool_file to a JSONL of "
                    "{source_id, question, solution} variants")


def check_strategies(names) -> None:
    if unknown := [s for s in names if s not in STRATEGIES]:
        raise PremError(f"curation_strategies: unknown {unknown}; known: {list(STRATEGIES)}")


# ---- scores and selection --------------------------------------------------------------------------

def forgetting_events(train_acc) -> np.ndarray:
    """Per example (columns), how often its accuracy fell from one measured checkpoint to the next."""
    a = pd.DataFrame(np.asarray(train_acc, dtype=float)).ffill()  # NaN: unmeasured, compare to the last value
    return (a.diff() < 0).sum(axis=0).to_numpy(int)


def n_steps(ex: Example) -> int:
    if "n_steps" in ex.meta:
        return int(ex.meta["n_steps"])
    body = ex.solution.split(tasks.MARKER)[0]
    return sum(1 for line in body.splitlines() if line.strip())


def hardness(examples: list[Example]) -> np.ndarray:
    """meta level, else difficulty, where every example has it and it varies; else n_steps."""
    for key in ("level", "difficulty"):
        values = [ex.meta.get(key) for ex in examples]
        if all(v is not None for v in values) and len(set(values)) > 1:
            return np.asarray(values, dtype=float)
    return np.asarray([n_steps(ex) for ex in examples], dtype=float)


def unconditional_prompt(tokenizer) -> str:
    """The prompt NLL(y) is conditioned on: BOS alone when the tokenizer has one, else "\\n"."""
    bos = tokenizer.bos_token_id
    if bos is not None:
        if list(tokenizer("")["input_ids"]) == [bos]:
            return ""  # the tokenizer prepends BOS itself
        if list(tokenizer(tokenizer.bos_token, add_special_tokens=False)["input_ids"]) == [bos]:
            return tokenizer.bos_token
    return "\n"


def ifd_scores(lm, tokenizer, examples, prompt_template=tasks.PROMPT_TEMPLATE,
               target_template=tasks.TARGET_TEMPLATE, batch_size: int = 32) -> np.ndarray:
    """log PPL(y|x) / log PPL(y) per example (the target tokens are the same, so a ratio of summed NLLs)."""
    from premem.perplexity import target_nll

    targets = [tasks.format_target(ex, target_template) for ex in examples]
    cond, n = target_nll(lm, tokenizer, [tasks.format_prompt(ex, prompt_template) for ex in examples], targets,
                         batch_size=batch_size, progress=False)
    free, m = target_nll(lm, tokenizer, [unconditional_prompt(tokenizer)] * len(examples), targets,
                         batch_size=batch_size, progress=False)
    if not np.array_equal(n, m):  # cannot happen: targets are tokenised alone, whatever the prompt
        raise PremError("ifd: target token counts differ between the conditional and unconditional pass")
    return (cond / n) / (free / m)


def select(scores: pd.DataFrame, strategy: str, threshold: float, top_fraction: float | None = None,
           seed: int = 0) -> tuple[list[str], bool]:
    """Selected example ids in a seeded random order, and whether the pre-mem rule selected none
    (then all are). The order is what `allocate` deals a budget in: random, so a budget smaller than
    the selection is spread uniformly over it (dealt neediest first, it would go to the lowest-scored
    examples whatever the threshold).

    `scores` has example_id, pre_mem_acc and score (higher: more in need) in the originals' order."""
    check_strategies([strategy])
    rng = np.random.default_rng(seed)
    rule = scores[scores.pre_mem_acc <= threshold]  # NaN (unmeasured) is never <= t
    if strategy == "iid":
        chosen = scores
    elif strategy == "premem":
        chosen = rule if len(rule) else scores
    else:
        m = round(top_fraction * len(scores)) if top_fraction else len(rule) or len(scores)  # the rule's fallback
        chosen = scores.sort_values("score", ascending=False, kind="stable", na_position="last")[:max(m, 1)]
    fallback = strategy == "premem" and len(rule) == 0
    return chosen.example_id.to_numpy()[rng.permutation(len(chosen))].tolist(), fallback


def allocate(ids: list[str], n: int, capacity: dict | None = None) -> dict[str, int]:
    """Round-robin: n new examples over `ids` in order, skipping those whose source ran dry."""
    counts = dict.fromkeys(ids, 0)
    cap = {i: (capacity or {}).get(i) for i in ids}
    open_ = [i for i in ids if cap[i] is None or cap[i] > 0]
    while n > 0:
        if not open_:
            raise PremError(f"no similar examples left to collect {n} more (selected: {ids[:3]}...)")
        for i in list(open_):
            if n == 0:
                break
            counts[i] += 1
            n -= 1
            if cap[i] is not None and counts[i] >= cap[i]:
                open_.remove(i)
    return counts


def collect(source: Source, originals: dict, counts: dict, exclude: set, seed: int) -> list[Example]:
    """counts[id] new examples like each original, none of whose questions is in `exclude` (updated)."""
    out = []
    for i, c in counts.items():
        ex, got, ask = originals[i], [], c
        while len(got) < c:
            cap = source.capacity(ex)
            stream = source.similar(ex, ask if cap is None else min(ask, cap), seed)
            got = [e for e in stream if e.question not in exclude][:c]
            if len(got) < c and (cap is not None and ask >= cap or ask > 50 * c + len(exclude)):
                raise PremError(f"only {len(got)} new examples like {i}, {c} asked")
            ask += c
        exclude.update(e.question for e in got)
        out += got
    return out


def score_table(strategy: str, dyn, originals: list[Example], tau: float, ifd=None) -> pd.DataFrame:
    """Per original (in order): final pre-memorization accuracy and the strategy's score."""
    by_col = {e: j for j, e in enumerate(dyn.example_ids)}
    cols = [by_col[ex.id] for ex in originals]
    acc, ppl = dyn.train_acc[:, cols], dyn.perplexity[:, cols]
    pre = metrics.pre_mem_acc(acc, ppl, tau)[-1]
    score = {"premem": lambda: -pre, "iid": lambda: np.zeros(len(originals)), "ifd": lambda: ifd,
             "most_steps": lambda: np.asarray([n_steps(ex) for ex in originals], dtype=float),
             "hardest": lambda: hardness(originals), "low_train_acc": lambda: -acc[-1],
             "high_loss": lambda: ppl[-1], "forgetting": lambda: forgetting_events(acc).astype(float)}[strategy]()
    return pd.DataFrame(dict(example_id=[ex.id for ex in originals], pre_mem_acc=pre, score=score))


def ifd_model(cfg: Params, out: Path, spec: sweep.RunSpec, train: list[Example], base: str):
    """(model, tokenizer) finetuned IFD_EPOCHS epochs on `train`: the run itself when it has that
    many epochs, else a probe finetuned (not recorded) under <out>/ifd/."""
    from premem import model as model_lib, training

    if spec.epochs == IFD_EPOCHS:
        return training.load_checkpoint(record.final_checkpoint(out, spec.run))
    lm, tok = model_lib.load_base(base, cache_dir=cfg.path("cache_dir"), dtype=cfg.dtype,
                                  quantization=cfg.quantization)
    ckpts = sweep.finetune_on(cfg, lm, tok, train, out / "ifd" / spec.run, spec, IFD_EPOCHS, IFD_EPOCHS)
    return training.load_checkpoint(ckpts[-1]["path"])


# ---- the rounds --------------------------------------------------------------------------------------

def _write_examples(path: Path, examples: list[Example]) -> None:
    io.write_text(path, "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in examples))


def _read_examples(path: Path) -> list[Example]:
    return [Example(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def budgets(cfg: Params, strategy: str) -> list[int]:
    b = (cfg.curation_iid_rounds or cfg.curation_rounds) if strategy == "iid" else cfg.curation_rounds
    if not b or any(n < 1 for n in b):
        raise PremError(f"curation budgets must be positive, got {b} for {strategy}")
    return list(b)


def curation_params(cfg: Params) -> Params:
    """`cfg` with the sweep's grid replaced by what curation trains (one lr, one epoch count, all
    of its originals: curation_originals, else n_train, checkpoints: curation_max_checkpoints,
    samples per original: curation_k, else k), so
    the curation folder's hash, and its cache, do not change when the sweep's grid, training set or
    checkpoint spacing does.
    Seeds come from curation_seeds; the hash leaves them and curation_strategies out: each (strategy,
    seed) chain's runs carry both in their names, so adding one adds runs and reuses the others."""
    lr, epochs = cfg.curation_lr or cfg.lrs[0], cfg.curation_epochs or cfg.epochs[0]
    # curation_k replaces k for the originals' samples; k_test stays what it was (k when unset).
    samples = dict(k=cfg.curation_k, k_test=cfg.k_test or cfg.k) if cfg.curation_k else {}
    return cfg.model_copy(update=dict(lrs=[lr], epochs=[epochs], data_fractions=[1.0], seeds=[],
                                      n_train=cfg.curation_originals or cfg.n_train, curation_originals=None,
                                      max_checkpoints=cfg.curation_max_checkpoints,
                                      curation_lr=lr, curation_epochs=epochs, curation_k=None, **samples))


def folder_of(cfg: Params) -> Path:
    """The curation folder `curate` writes for `cfg` when given no `out`: <out_dir>/curation-<hash>."""
    return cfg.path("out_dir") / f"curation-{curation_params(cfg).hash(*CURATION_KEYS)}"


def run_name(strategy: str, r: int, seed: int) -> str:
    """A chain's run after r collections; also the stem of the selection and the collection that fed it."""
    return f"originals_seed{seed}" if r == 0 else f"{strategy}_r{r}_seed{seed}"


def chain_of(name: str) -> tuple[str, int, int]:
    """(strategy, round, seed) of a run_name with round >= 1 (strategy names may hold underscores)."""
    s, r, seed = name.rsplit("_", 2)
    return s, int(r.removeprefix("r")), int(seed.removeprefix("seed"))


def curate(cfg: Params, out: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Run every strategy's rounds for every seed (cached, resumable); returns the curation folder."""
    check_strategies(cfg.curation_strategies)
    sweep.quiet_libraries()
    out = Path(out) if out else folder_of(cfg)
    cfg = curation_params(cfg)
    originals, test, held = sweep.load_examples(cfg, heldout=True)  # bad input fails before the folder is made
    source = source_for(cfg)
    record.check_target(out, cfg, force=force, extra_keys=CURATION_KEYS)
    with record.locked(out, "premem curate"):
        record.create(out, cfg, force=force, extra_keys=CURATION_KEYS, command="premem curate")
        _curate(cfg, out, originals, test, held, source, progress)
    return out


def _curate(cfg: Params, out: Path, originals, test, held, source: Source, progress: bool) -> None:
    from tqdm.auto import tqdm

    base = sweep.base_model_path(cfg, progress=progress)
    lr, epochs = cfg.curation_lr, cfg.curation_epochs
    plan = {s: budgets(cfg, s) for s in cfg.curation_strategies}
    new = {(s, seed): [] for s in plan for seed in cfg.curation_seeds}

    def spec_of(s, r, seed):  # deterministic names, for people: the values live in runs.parquet
        return sweep.RunSpec(run_name(s, r, seed), lr, epochs, 1.0, seed)

    n_rounds, rows = max(len(b) for b in plan.values()), []
    for r in range(n_rounds + 1):
        chains = [(s, seed) for s in plan for seed in cfg.curation_seeds if len(plan[s]) >= r]
        jobs = {spec_of(s, r, seed): originals + new[(s, seed)] for s, seed in chains}  # round 0: one run
        final_only = {spec_of(s, r, seed).run for s, seed in chains
                      if not reads_history(plan, s, r, cfg.curation_top_fraction)}
        bar = tqdm(total=len(jobs), desc=f"curation round {r} of {n_rounds}", unit="run", disable=not progress)
        sweep.run_jobs(cfg, jobs, test, held, out, base, bar, recorded=originals, test_final_only=True,
                       final_only=final_only)
        bar.close()
        record.finish(out)  # every run started so far: on a rerun, later rounds' runs too
        dyns = {d.run: d for d in record.read_runs(out)}
        for s, seed in chains:
            spec = spec_of(s, r, seed)
            d, tau = dyns[spec.run], metrics.chosen_tau(cfg, [dyns[spec.run]])[0]
            pre = np.nan if spec.run in final_only else float(d.pre_mem_acc(tau)[-1])  # one checkpoint: no history
            rows.append(dict(strategy=s, round=r, seed=seed, n_examples=len(jobs[spec]), n_new=len(new[(s, seed)]),
                             test_acc=float(d.test_acc[-1]), pre_mem_acc=pre, run=spec.run))
            if r < len(plan[s]):  # not the chain's last run: collect for the next round
                collected = out / "collected" / f"{run_name(s, r + 1, seed)}.jsonl"
                if not collected.exists():
                    _write_examples(collected, _next_round(cfg, out, base, source, s, r, seed, plan[s][r], d,
                                                           tau, spec, jobs[spec], originals, held + test,
                                                           history=spec.run not in final_only))
                new[(s, seed)] = new[(s, seed)] + _read_examples(collected)
        table = pd.DataFrame(rows).sort_values(["strategy", "round", "seed"], kind="stable").reset_index(drop=True)
        io.write_parquet(out / "curation.parquet", table)
    if "iid" in plan:
        _write_efficiency(out, table)
    _record_base(cfg, out, base, test)


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
        return x in EVERY_CHECKPOINT or (x != "iid" and top_fraction is None)

    return any(reads(x) for x in plan) if r == 0 else r < len(plan[s]) and reads(s)


def base_test_acc(folder: str | Path) -> float:
    """The base model's own test accuracy (no finetuning), as `curate` recorded it in <folder>/base.json."""
    f = Path(folder) / "base.json"
    if not f.is_file():
        raise PremError(f"no base.json in {folder}: run curation.curate on its params first")
    return float(json.loads(f.read_text())["test_acc"])


def example_accuracy(cfg: Params, lm, checkpoint, tok, examples: list[Example]) -> np.ndarray:
    """Per example, the fraction of k_test sampled answers that are right, sampled as a run's final
    checkpoint is (cfg.data_seed): the base model's test accuracy and `collected_accuracy` use it."""
    from premem import grading, recorder

    prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in examples]
    answers = recorder.sample_answers(cfg, lm, checkpoint, tok, prompts, cfg.k_test or cfg.k, cfg.data_seed)
    checker = tasks.answer_checker(cfg)
    return np.asarray([np.mean([g.correct for g in grading.grade_many(a, ex.answer, checker)])
                       for ex, a in zip(examples, answers)], dtype=float)


def _record_base(cfg: Params, out: Path, base: str, test: list[Example]) -> None:
    """The base model's test accuracy before any finetuning (k_test per question): the floor every
    scaling curve starts from. Cached in <out>/base.json."""
    from premem import model as model_lib

    f = out / "base.json"
    if not f.exists():
        lm, tok = model_lib.load_base(base, cache_dir=cfg.path("cache_dir"), dtype=cfg.dtype,
                                      quantization=cfg.quantization)
        acc = example_accuracy(cfg, lm, base, tok, test)  # the same k per question: its mean is the sample mean
        io.write_json(f, dict(test_acc=float(acc.mean()), n_test=len(test), k=cfg.k_test or cfg.k))


def _next_round(cfg, out, base, source, s, r, seed, budget, d, tau, spec, train, originals, others,
                history=True):
    """Score the originals on run `d`, select, allocate `budget` round-robin over the selection's
    random order, collect; the selection is kept under <out>/selections/ (its pre_mem_acc NaN when
    `d` recorded its last checkpoint alone, history=False)."""
    ifd = None
    if s == "ifd":
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


def collected_accuracy(cfg: Params, folder: str | Path, progress: bool = True) -> pd.DataFrame:
    """How hard each strategy's collected data was for the run whose scores chose it: per (strategy,
    round, seed), the accuracy of round r-1's final checkpoint on the examples collected for round r
    (k_test samples each), and their mean step count. Algorithm 1 pays off only where data "like the
    selected originals" is data the model still gets wrong; round 1's rows share one judge per seed
    (the originals' run), so they compare the rules directly. Cached in <folder>/collected_accuracy.parquet,
    rewritten after each judge (a killed run resumes)."""
    from tqdm.auto import tqdm

    from premem import model as model_lib

    folder = Path(folder)
    out = folder / "collected_accuracy.parquet"
    done = pd.read_parquet(out) if out.exists() else pd.DataFrame(columns=["strategy", "round", "seed"])
    have = set(zip(done.strategy, done["round"], done.seed))
    by_judge = {}
    for f in sorted((folder / "collected").glob("*.jsonl")):  # run_name(strategy, round, seed).jsonl
        s, r, seed = key = chain_of(f.stem)
        if key not in have:
            by_judge.setdefault(run_name(s, r - 1, seed), []).append((key, _read_examples(f)))
    rows = done.to_dict("records")
    for judge, items in tqdm(sorted(by_judge.items()), desc="collected data", disable=not progress):
        ckpt = record.final_checkpoint(folder, judge)
        lm, tok = model_lib.load_base(str(ckpt), dtype=cfg.dtype)
        acc = iter(example_accuracy(cfg, lm, ckpt, tok, [ex for _, exs in items for ex in exs]))
        for (s, r, seed), exs in items:
            rows.append(dict(strategy=s, round=r, seed=seed, judge=judge, n_collected=len(exs),
                             accuracy=float(np.mean([next(acc) for _ in exs])) if exs else np.nan,
                             mean_steps=float(np.mean([n_steps(ex) for ex in exs])) if exs else np.nan))
        io.write_parquet(out, pd.DataFrame(rows))
    return pd.DataFrame(rows).sort_values(["round", "strategy", "seed"], kind="stable").reset_index(drop=True)


# ---- data efficiency and the figure -----------------------------------------------------------------

def iid_examples_needed(n_examples, test_acc, target: float) -> tuple[float, str]:
    """Examples the IID curve needs to reach `target`, by linear interpolation at its first crossing.

    Flags: "interpolated"; "at_or_below_start" (target <= the curve's first point: at most that many);
    "above_iid_max" (never reached: inf); "nan" (target unmeasured)."""
    order = np.argsort(np.asarray(n_examples, dtype=float), kind="stable")
    n, y = np.asarray(n_examples, dtype=float)[order], np.asarray(test_acc, dtype=float)[order]
    if n.size == 0:
        raise PremError("data efficiency needs an iid curve, and it is empty")
    if np.isnan(target):
        return np.nan, "nan"
    if target <= y[0]:
        return float(n[0]), "at_or_below_start"
    for j in range(1, n.size):
        if y[j - 1] < target <= y[j]:
            return float(n[j - 1] + (target - y[j - 1]) / (y[j] - y[j - 1]) * (n[j] - n[j - 1])), "interpolated"
    return np.inf, "above_iid_max"


def _ratios(table: pd.DataFrame) -> pd.DataFrame:
    """data_efficiency's point estimates, curves averaged over the seeds in `table`."""
    mean = table.groupby(["strategy", "round", "n_examples"], as_index=False).test_acc.mean()
    iid = mean[mean.strategy == "iid"]
    if iid.empty:
        raise PremError("data efficiency needs the 'iid' strategy in curation_strategies")
    curve = iid.groupby("n_examples").test_acc.mean()
    rows = []
    for r in mean[(mean.strategy != "iid") & (mean["round"] > 0)].itertuples():
        need, flag = iid_examples_needed(curve.index, curve.to_numpy(), r.test_acc)
        rows.append(dict(strategy=r.strategy, round=r.round, n_examples=r.n_examples, test_acc=r.test_acc,
                         iid_examples=need, ratio=need / r.n_examples, flag=flag))
    return pd.DataFrame(rows, columns=["strategy", "round", "n_examples", "test_acc", "iid_examples", "ratio", "flag"])


def data_efficiency(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per curated (strategy, round >= 1): IID examples needed / curated examples, on curves averaged
    over seeds; ratio_lo / ratio_hi: 95% bootstrap over seeds (a resampled set of seeds averages
    both the curated and the IID curve, so both curves' seed noise enters; needs >= 2 seeds, else
    NaN). inf where the IID curve never reaches the curated accuracy."""
    point = _ratios(table)
    seeds = np.sort(table.seed.unique())
    point["n_seeds"] = len(seeds)
    point["ratio_lo"] = point["ratio_hi"] = np.nan
    if len(seeds) < 2 or point.empty:
        return point
    rng, by_seed = np.random.default_rng(seed), {s: table[table.seed == s] for s in seeds}
    boot = []
    for _ in range(n_boot):  # a resample holds repeated seeds: their runs enter the means twice
        pick = pd.concat([by_seed[s] for s in rng.choice(seeds, size=len(seeds))], ignore_index=True)
        boot.append(_ratios(pick).set_index(["strategy", "round"]).ratio)
    boot = pd.concat(boot, axis=1)
    for i, r in point.iterrows():  # inverted_cdf: no interpolation between inf values
        b = boot.loc[(r.strategy, r["round"])].to_numpy(dtype=float)
        b = b[~np.isnan(b)]  # a resample without the seeds that ran this strategy measures nothing
        if b.size:
            point.loc[i, ["ratio_lo", "ratio_hi"]] = np.quantile(b, [0.025, 0.975], method="inverted_cdf")
    return point


def paired_gaps(table: pd.DataFrame, reference: str = "premem") -> pd.DataFrame:
    """Does `reference` beat each other strategy at the same budget? Per (strategy, round >= 1) run
    by both with the same n_examples: the reference's test accuracy minus the strategy's, seed by
    seed (a seed's chains share their originals run and training seed, so much of the seed noise
    cancels, unlike in two separate ratio intervals), averaged (`gap`); gap_lo / gap_hi: the paired
    t interval (95%, n_seeds - 1 degrees of freedom; NaN with one seed): with 3 seeds a bootstrap
    over seeds would never reach past the per-seed gaps, the t interval widens as it should;
    `wins`: seeds where the reference was more accurate. Reads accuracy, not examples: no i.i.d.
    curve enters."""
    from scipy import stats

    key = ["round", "seed", "n_examples"]
    ref = table[table.strategy == reference].set_index(key).test_acc
    if ref.empty:
        raise PremError(f"paired_gaps: no '{reference}' runs in the table")
    rows = []
    for (s, r), t in table[(table.strategy != reference) & (table["round"] > 0)].groupby(["strategy", "round"]):
        d = (ref - t.set_index(key).test_acc).dropna()  # seeds (and budgets) both ran
        if d.empty:
            continue
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
        rows.append(dict(reference=reference, strategy=s, round=r, n_examples=int(d.index.get_level_values(2)[0]),
                         gap=float(d.mean()), gap_lo=float(d.mean() - half), gap_hi=float(d.mean() + half),
                         wins=int((d > 0).sum()), n_seeds=len(d)))
    return pd.DataFrame(rows, columns=["reference", "strategy", "round", "n_examples", "gap", "gap_lo", "gap_hi",
                                       "wins", "n_seeds"])


def plot_scaling(table: pd.DataFrame, ax, base_acc: float | None = None):
    """Final test accuracy against training examples, one line per strategy, seeds as error bars
    (std); base_acc, the base model's own test accuracy, as a dotted line."""
    if base_acc is not None:
        ax.axhline(base_acc, color="0.5", ls=":", lw=1, label="base model, not finetuned")
    for i, (s, t) in enumerate(table.groupby("strategy", sort=False)):
        g = t.groupby("n_examples").test_acc
        m, sd = g.mean(), g.std().fillna(0)
        ax.errorbar(m.index, m.to_numpy(), yerr=sd.to_numpy(), marker="o", ms=4, capsize=3,
                    color="k" if s == "iid" else f"C{i}", ls="--" if s == "iid" else "-", label=s)
    ax.set_xlabel("training examples (originals + collected)")
    ax.set_ylabel("final test accuracy")
    ax.legend(fontsize=8, frameon=False)
    return ax
