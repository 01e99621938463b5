"""The claims ledger: each claim of the paper, the paper's number, ours from the authors' released
logs and ours from a live run, computed by premem.claims from the cached records (never typed by
hand, and no notebook needs to have run).

`build` gives one row per claim (a short cell each, the verdict by the rule in its claims.judge_*
function) and the claims themselves; `write` renders figures/claims.md (the short table, then each
claim's detail) and refreshes the README's copy of the table between its ledger markers.
`premem reproduce` calls `write` at the end; `premem ledger` alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from premem import claims, io
from premem.config import DEFAULT_PARAMS, NOTEBOOK_PARAMS, Params, load_params, project_root
from premem.errors import PremError

BEGIN, END = "<!-- claims ledger: begin (written by `premem ledger`) -->", "<!-- claims ledger: end -->"
NOT_IN_LOGS = "not in the released logs"
COLUMNS = ["claim", "paper", "released logs", "live", "verdict (live)", "params"]
# Live records read beside the default's, a column each (live, verdict, params), from the record
# made here or the one the repository ships (premem.shipped); a record not there says which
# command makes it. A new live column is one entry here.
ALSO_LIVE = {"SmolLM2-135M": "params/smollm2-135m_arith.yaml"}


def _attempt(make):
    """A claim, or the sentence saying which stage it waits for."""
    try:
        return make()
    except claims.Missing as e:
        return f"({e})"


def live_claims(live: Params) -> dict:
    """Each claim of CLAIMS from the live params' cached records: a Claim, or the sentence saying
    what is missing."""
    sweep = _attempt(lambda: claims.open_sweep(live))
    return {key: _attempt(lambda spec=spec: spec.live(live, sweep)) if not spec.needs_sweep or
            isinstance(sweep, claims.Sweep) else sweep for key, spec in claims.CLAIMS.items()}


def _cells(c) -> list:
    return [c.ours, c.verdict, c.source] if isinstance(c, claims.Claim) else [c, "", ""]


def build(released: Params | None, live: Params, also: dict[str, Params] | None = None) -> tuple[pd.DataFrame, list]:
    """One row per claim, and the Claim objects (or strings saying what is missing), from the live
    params' cached records, those of `also` ({label: params}, a column each) and the released logs
    (`released` None: not read)."""
    columns = {"": live_claims(live), **{label: live_claims(cfg) for label, cfg in (also or {}).items()}}
    rel, missing = None, "(released logs not read)"
    if released is not None:
        try:
            rel = claims.released_logs(released)
        except PremError as e:  # no released-logs folder here: the live claims stand alone
            missing = f"({e})"
    rows = []
    for key, spec in claims.CLAIMS.items():
        from_logs = NOT_IN_LOGS if spec.released is None else spec.released(rel) if rel else missing
        rows.append([spec.statement, spec.paper, from_logs, *[x for c in columns.values() for x in _cells(c[key])]])
    names = COLUMNS + [x for label in columns if label for x in (f"live, {label}", f"verdict ({label})",
                                                                 f"params ({label})")]
    return pd.DataFrame(rows, columns=names), [rel, *[c for col in columns.values() for c in col.values()]]


def render(ledger: pd.DataFrame) -> str:
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ") if not (isinstance(x, float) and np.isnan(x)) else ""

    lines = ["| " + " | ".join(ledger.columns) + " |", "|" + "---|" * len(ledger.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in ledger.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between the ledger markers; True when the README changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise PremError(f"{readme} has no ledger markers ({BEGIN!r} ... {END!r})")
    head, rest = text.split(BEGIN, 1)
    new = head + BEGIN + "\n" + table + END + rest.split(END, 1)[1]
    if new != text:
        io.write_text(readme, new)
    return new != text


def details(all_claims: list) -> str:
    """Each claim's full finding, every interval its verdict reads, and its record."""
    parts = []
    for c in all_claims:
        if isinstance(c, claims.Claim):
            where = "released logs" if c.released else "live"
            parts.append(f"- **{c.statement}** ({where}, {c.source}): {c.detail} (verdict: {c.verdict})")
    return "\n".join(parts) + "\n"


def write(live: Params, figures: str | Path, readme: str | Path | None = None,
          released: Params | None = None, also: dict[str, Params] | None = None) -> Path:
    """figures/claims.md from the records, and the README's copy of its table when `readme` is given."""
    table, all_claims = build(released, live, also)
    text = render(table)
    lives = ", ".join(f"`{cfg.name}`" for cfg in [live, *(also or {}).values()])
    out = io.write_text(Path(figures) / "claims.md", (
        "# Claims ledger\n\nGenerated by `premem ledger` from the cached records (premem.claims); "
        f"live: {lives}, released logs: `{released.name if released else 'not read'}`. The verdict rules "
        "are the `judge_*` functions of `lib/premem/claims.py`.\n\n" + text
        + "\n## Details\n\n" + details(all_claims)))
    if readme is not None:
        update_readme(Path(readme), text)
    return out


def write_for(params: str | Path | None = None) -> Path:
    """The ledger of a live params file (default params/tiny.yaml) beside the released logs' claim
    and ALSO_LIVE's columns, into that file's figures_dir; the README's copy only for the default,
    so a smoke run never overwrites the numbers the README shows."""
    root = project_root()
    live = load_params(root / (params or DEFAULT_PARAMS))
    released = load_params(root / NOTEBOOK_PARAMS["01"])
    also = {label: load_params(root / f) for label, f in ALSO_LIVE.items()}
    also = {label: cfg for label, cfg in also.items() if cfg.hash() != live.hash()}  # not twice
    default = Path(root / (params or DEFAULT_PARAMS)).resolve() == (root / DEFAULT_PARAMS).resolve()
    return write(live, live.path("figures_dir"), root / "README.md" if default else None, released=released,
                 also=also)
