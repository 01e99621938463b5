"""A curation chain's names, budgets and collections (premem.curation): the run of strategy s after
r collections for a seed is `run_name(s, r, seed)`, and it trains on the originals plus the
collections of rounds 1..r, each a JSONL file under <folder>/collected/ named like the run it fed."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from premem import io
from premem.config import Params
from premem.curation_sources import Source
from premem.errors import PremError
from premem.tasks import Example


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


def write_examples(path: Path, examples: list[Example]) -> None:
    io.write_text(path, "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in examples))


def read_examples(path: Path) -> list[Example]:
    return [Example(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def budgets(cfg: Params, strategy: str) -> list[int]:
    b = (cfg.curation_iid_rounds or cfg.curation_rounds) if strategy == "iid" else cfg.curation_rounds
    if not b or any(n < 1 for n in b):
        raise PremError(f"curation budgets must be positive, got {b} for {strategy}")
    return list(b)


def run_name(strategy: str, r: int, seed: int) -> str:
    """A chain's run after r collections; also the stem of the selection and the collection that fed it."""
    return f"originals_seed{seed}" if r == 0 else f"{strategy}_r{r}_seed{seed}"


def chain_of(name: str) -> tuple[str, int, int]:
    """(strategy, round, seed) of a run_name with round >= 1 (strategy names may hold underscores)."""
    s, r, seed = name.rsplit("_", 2)
    return s, int(r.removeprefix("r")), int(seed.removeprefix("seed"))


def chain_train(out: Path, originals: list[Example], s: str | None, r: int, seed: int) -> list[Example]:
    """What run r of a chain trains on: the originals, then each round's collection in order."""
    return originals + [ex for i in range(1, r + 1) for ex in read_examples(collected_file(out, s, i, seed))]


def collected_file(out: Path, s: str, r: int, seed: int) -> Path:
    return out / "collected" / f"{run_name(s, r, seed)}.jsonl"
