"""The curation rules of claim 4: which originals a round of Algorithm 1 collects more of.

Each rule is one entry of RULES: how it picks (`threshold`: final pre-memorization accuracy <= t,
the paper's rule; `all`: every original, i.i.d. scaling; `top`: the highest scores, as many as the
pre-memorization rule picks on the same run unless curation_top_fraction says), its score (higher:
more in need of data), whether the score reads every checkpoint of the round's run (so that run
records them all), and whether it needs a briefly finetuned probe model (IFD). A new rule is one
entry here; premem.curation runs whatever is registered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from premem import metrics, tasks
from premem.errors import PremError
from premem.perplexity import target_nll
from premem.tasks import Example


@dataclass(frozen=True)
class Scored:
    """What a rule's score reads, per original (columns) at each recorded checkpoint (rows)."""
    originals: list[Example]
    train_acc: np.ndarray
    perplexity: np.ndarray
    pre_mem_acc: np.ndarray  # final pre-memorization accuracy
    ifd: np.ndarray | None = None  # IFD scores, for rules that need the probe


@dataclass(frozen=True)
class Rule:
    picks: str  # "threshold", "all" or "top"
    score: Callable[[Scored], np.ndarray]
    reads_history: bool = False
    needs_probe: bool = False


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


RULES: dict[str, Rule] = {
    "premem": Rule("threshold", lambda s: -s.pre_mem_acc, reads_history=True),
    "iid": Rule("all", lambda s: np.zeros(len(s.originals))),
    "ifd": Rule("top", lambda s: s.ifd, needs_probe=True),  # Li et al.: log PPL(y|x) / log PPL(y)
    "most_steps": Rule("top", lambda s: np.asarray([n_steps(ex) for ex in s.originals], dtype=float)),
    "hardest": Rule("top", lambda s: hardness(s.originals)),  # meta level or difficulty, else steps
    "low_train_acc": Rule("top", lambda s: -s.train_acc[-1]),
    "high_loss": Rule("top", lambda s: s.perplexity[-1]),  # final perplexity of the gold solution
    "forgetting": Rule("top", lambda s: forgetting_events(s.train_acc).astype(float), reads_history=True),  # Toneva
}


def check_strategies(names) -> None:
    if unknown := [s for s in names if s not in RULES]:
        raise PremError(f"curation_strategies: unknown {unknown}; known: {list(RULES)}")


def score_table(strategy: str, dyn, originals: list[Example], tau: float, ifd=None) -> pd.DataFrame:
    """Per original (in order): final pre-memorization accuracy and the strategy's score."""
    by_col = {e: j for j, e in enumerate(dyn.example_ids)}
    cols = [by_col[ex.id] for ex in originals]
    acc, ppl = dyn.train_acc[:, cols], dyn.perplexity[:, cols]
    pre = metrics.pre_mem_acc(acc, ppl, tau)[-1]
    score = RULES[strategy].score(Scored(originals, acc, ppl, pre, ifd))
    return pd.DataFrame(dict(example_id=[ex.id for ex in originals], pre_mem_acc=pre, score=score))


def select(scores: pd.DataFrame, strategy: str, threshold: float, top_fraction: float | None = None,
           seed: int = 0) -> tuple[list[str], bool]:
    """Selected example ids in a seeded random order, and whether the pre-mem rule selected none
    (then all are). The order is what `allocate` deals a budget in: random, so a budget smaller than
    the selection is spread uniformly over it (dealt neediest first, it would go to the lowest-scored
    examples whatever the threshold).

    `scores` has example_id, pre_mem_acc and score (higher: more in need) in the originals' order."""
    check_strategies([strategy])
    picks = RULES[strategy].picks
    rng = np.random.default_rng(seed)
    rule = scores[scores.pre_mem_acc <= threshold]  # NaN (unmeasured) is never <= t
    if picks == "all":
        chosen = scores
    elif picks == "threshold":
        chosen = rule if len(rule) else scores
    else:
        m = round(top_fraction * len(scores)) if top_fraction else len(rule) or len(scores)  # the rule's fallback
        chosen = scores.sort_values("score", ascending=False, kind="stable", na_position="last")[:max(m, 1)]
    fallback = picks == "threshold" and len(rule) == 0
    return chosen.example_id.to_numpy()[rng.permutation(len(chosen))].tolist(), fallback


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
    targets = [tasks.format_target(ex, target_template) for ex in examples]
    cond, n = target_nll(lm, tokenizer, [tasks.format_prompt(ex, prompt_template) for ex in examples], targets,
                         batch_size=batch_size, progress=False)
    free, m = target_nll(lm, tokenizer, [unconditional_prompt(tokenizer)] * len(examples), targets,
                         batch_size=batch_size, progress=False)
    if not np.array_equal(n, m):  # cannot happen: targets are tokenised alone, whatever the prompt
        raise PremError("ifd: target token counts differ between the conditional and unconditional pass")
    return (cond / n) / (free / m)
