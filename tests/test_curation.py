"""Claim 4 machinery: selection, round-robin allocation, sources, IFD, forgetting, data efficiency,
and one smoke curation round that a rerun reads back without training."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from premem import (curation, curation_judge, encoding, launcher, perplexity, record, record_folder, sampling, tasks,
                    training)
from premem.config import CURATION_KEYS, load_params
from premem.errors import PremError

from tiny_lm import char_tokenizer, single_thread, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


def scores():
    return pd.DataFrame(dict(example_id=list("abcdef"), pre_mem_acc=[0.0, 0.8, 0.75, 0.5, 1.0, np.nan],
                             score=[1.0, 3.0, 3.0, np.nan, 2.0, 0.0]))


def test_premem_selects_at_or_below_threshold_in_a_seeded_random_order():
    ids, fallback = curation.select(scores(), "premem", threshold=0.75)
    assert sorted(ids) == ["a", "c", "d"] and not fallback  # 0.75 itself is selected; NaN (unmeasured) is not
    ids, fallback = curation.select(scores(), "premem", threshold=-0.1)
    assert fallback and sorted(ids) == list("abcdef")  # none selected: every original
    # The order is a seeded shuffle: the same seed gives the same order, and over seeds every
    # selected example comes first about equally often (neediest-first would always put "a" first).
    assert curation.select(scores(), "premem", 0.75, seed=5) == curation.select(scores(), "premem", 0.75, seed=5)
    firsts = pd.Series([curation.select(scores(), "premem", 0.75, seed=s)[0][0] for s in range(300)]).value_counts()
    assert set(firsts.index) == {"a", "c", "d"} and firsts.min() > 70


def test_a_budget_smaller_than_the_selection_goes_to_a_uniform_sample_of_it():
    big = pd.DataFrame(dict(example_id=[f"x{i}" for i in range(100)], pre_mem_acc=np.linspace(0, 0.99, 100),
                            score=0.0))
    for threshold in (0.25, 0.75):
        got = []
        for seed in range(20):
            ids, _ = curation.select(big, "premem", threshold, seed=seed)
            counts = curation.allocate(ids, 10, None)
            got += [i for i, c in counts.items() if c]
        acc = big.set_index("example_id").pre_mem_acc[got]
        assert acc.le(threshold).all() and abs(acc.mean() - threshold / 2) < 0.08  # not the neediest ten


def test_ranked_strategies_take_as_many_as_the_rule_or_a_fraction():
    def top(*a, **k):
        return sorted(curation.select(scores(), "high_loss", *a, **k)[0])
    assert top(0.75) == ["b", "c", "e"]  # as many as the rule selects; ties keep order, NaN last
    assert top(0.75, top_fraction=0.5) == ["b", "c", "e"]
    assert top(0.75, top_fraction=0.7) == ["a", "b", "c", "e"]
    assert top(-0.1) == list("abcdef")  # the rule selects none: every original
    iid = curation.select(scores(), "iid", 0.75, seed=3)[0]
    assert sorted(iid) == list("abcdef") and iid == curation.select(scores(), "iid", 0.75, seed=3)[0]


def test_runs_record_their_history_only_where_a_later_selection_reads_it():
    plan = dict(premem=[64, 64], iid=[64, 64, 128], ifd=[64, 64], low_train_acc=[64, 64])
    history = {(s, r) for s in plan for r in range(len(plan[s]) + 1) if curation.reads_history(plan, s, r, None)}
    # Round 0 feeds every first selection; ranked rules are sized by the pre-mem rule on their run;
    # iid reads nothing, and a chain's last run feeds no selection.
    assert history == {(s, 0) for s in plan} | {("premem", 1), ("ifd", 1), ("low_train_acc", 1)}
    ranked = {(s, r) for s in plan for r in range(1, 3) if curation.reads_history(plan, s, r, 0.5)}
    assert ranked == {("premem", 1)}  # a top_fraction sizes ranked rules by itself
    assert curation.reads_history(dict(iid=[8], ifd=[8]), "iid", 0, 0.5) is False
    assert curation.reads_history(dict(iid=[8], forgetting=[8, 8]), "forgetting", 1, 0.5)


def test_round_robin_allocation_spends_the_budget_exactly():
    assert curation.allocate(["a", "d", "c"], 7) == {"a": 3, "d": 2, "c": 2}
    assert curation.allocate(["a", "d", "c"], 2) == {"a": 1, "d": 1, "c": 0}
    assert curation.allocate(["a", "d"], 5, {"a": 1, "d": None}) == {"a": 1, "d": 4}
    with pytest.raises(PremError, match="no similar examples left"):
        curation.allocate(["a", "d"], 4, {"a": 1, "d": 2})


def test_unknown_strategy_names_it_and_the_known_ones():
    with pytest.raises(PremError, match=r"unknown \['coreset'\]; known: \['premem', 'iid', 'ifd'"):
        curation.check_strategies(["premem", "coreset"])


def test_a_new_rule_is_one_entry(monkeypatch):
    """A rule registered in curation_rules.RULES is known, scored, selected and sized like the others."""
    from premem import curation_rules
    from premem.dynamics import RunDynamics

    monkeypatch.setitem(curation_rules.RULES, "longest_question",
                        curation_rules.Rule("top", lambda s: np.asarray([len(ex.question) for ex in s.originals],
                                                                        dtype=float)))
    curation.check_strategies(["premem", "longest_question"])
    originals = tasks.load_task("arith", "train", 4, seed=0)
    dyn = RunDynamics(run="r", steps=[1, 2], train_acc=np.full((2, 4), 0.5), perplexity=np.full((2, 4), 3.0),
                      test_acc=[0.1, 0.2], example_ids=np.array([ex.id for ex in originals]))
    table = curation.score_table("longest_question", dyn, originals, tau=-2.0)
    np.testing.assert_array_equal(table.score, [len(ex.question) for ex in originals])
    ids, fallback = curation.select(table, "longest_question", threshold=1.0, top_fraction=0.5)
    longest = table.sort_values("score", ascending=False).example_id[:2]
    assert sorted(ids) == sorted(longest) and not fallback
    plan = dict(premem=[8], longest_question=[8, 8])
    assert curation.reads_history(plan, "longest_question", 1, None)  # sized by the pre-mem rule
    assert not curation.reads_history(plan, "longest_question", 1, 0.5)


def test_pool_source(tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = ['{"source_id": "gsm8k-train-0", "question": "Q1?", "solution": "1 + 1 = 2\\n#### 2"}',
            "",
            '{"source_id": "gsm8k-train-0", "question": "Q2?", "solution": "2 + 2 = 4\\n#### 4"}',
            '{"source_id": "gsm8k-train-1", "question": "Q3?", "solution": "so\\n#### 1,000"}']
    pool.write_text("\n".join(rows) + "\n")
    src = curation.PoolSource(pool, "gsm8k")
    ex0, ex1 = (tasks.Example(f"gsm8k-train-{i}", "orig", "#### 1", "1") for i in (0, 1))
    assert src.capacity(ex0) == 2 and src.capacity(ex1) == 1
    both = src.similar(ex0, 2, seed=0)
    assert sorted(e.question for e in both) == ["Q1?", "Q2?"] and src.similar(ex0, 1, seed=0) == both[:1]
    assert {e.answer for e in both} == {"2", "4"} and src.similar(ex1, 1, 0)[0].answer == "1000"
    assert all(e.meta["similar_to"] == "gsm8k-train-0" for e in both)
    with pytest.raises(PremError, match="1 variants of gsm8k-train-1"):
        src.similar(ex1, 2, 0)
    got = curation.collect(src, {ex0.id: ex0}, {ex0.id: 1}, {"Q1?", "Q2?"} - {both[1].question}, seed=0)
    assert got == [both[1]]  # the first in the stream is excluded, so the next one comes
    for bad, why in [('{"source_id": "x", "question": "Q?", "solution": "no marker"}', "no '#### <answer>'"),
                     ('{"source_id": "x", "question": "Q?"}', r"fields \['solution'\]"),
                     ('{"source_id": "x", ', "not valid JSON")]:
        pool.write_text("\n".join(rows[:2] + [bad]) + "\n")
        with pytest.raises(PremError, match=f"{pool}:3: .*{why}"):
            curation.PoolSource(pool)


def test_procedural_collection_is_fresh_and_of_the_same_template():
    originals = tasks.load_task("arith", "train", 3, seed=1)
    by_id = {ex.id: ex for ex in originals}
    exclude = {ex.question for ex in originals}
    first = curation.collect(curation.ProceduralSource(), by_id, {originals[0].id: 2, originals[1].id: 1}, exclude, 0)
    again = curation.collect(curation.ProceduralSource(), by_id, {originals[0].id: 2}, exclude, 0)
    assert len(first) == 3 and len(again) == 2
    assert len({e.question for e in first + again}) == 5  # a later round continues the same stream
    for e in first + again:
        assert e.meta["template"] == by_id[e.meta["similar_to"]].meta["template"] and e.meta["split"] == "train"


@pytest.mark.parametrize("bos", [True, False, None])
def test_ifd_is_the_ratio_of_mean_token_nlls(bos):
    tok = char_tokenizer(bos=bool(bos))
    if bos is None:
        tok.bos_token = None  # no BOS at all: the unconditional prompt is a newline
    lm = tiny_llama(len(tok), seed=0)
    examples = tasks.load_task("arith", "train", 3, seed=0)
    targets = [tasks.format_target(ex) for ex in examples]
    uncond = {True: "", False: "<s>", None: "\n"}[bos]
    assert curation.unconditional_prompt(tok) == uncond
    assert encoding.encode_pairs(tok, [uncond], targets[:1])[0][1] == 1  # one token: BOS or newline
    with single_thread():
        got = curation.ifd_scores(lm, tok, examples, batch_size=2)
        cond, n = perplexity.target_nll(lm, tok, [tasks.format_prompt(ex) for ex in examples], targets, progress=False)
        free, m = perplexity.target_nll(lm, tok, [uncond] * 3, targets, progress=False)
    np.testing.assert_allclose(got, np.log(perplexity.perplexity(cond, n)) / np.log(perplexity.perplexity(free, m)))


def test_forgetting_events_by_hand():
    acc = np.array([[0, 1, .5, np.nan],
                    [1, 0, .5, 1],
                    [0, 1, np.nan, .5],
                    [1, .5, 1, .5]])
    # column 0: 1 -> 0 once; column 1: 1 -> 0 and 1 -> .5; column 2: never (NaN keeps .5); column 3: 1 -> .5
    assert curation.forgetting_events(acc).tolist() == [1, 2, 0, 1]


def test_collected_accuracy_judges_each_round_by_the_run_that_chose_it(tmp_path, monkeypatch):
    from premem import model as model_lib, record, recorder

    cfg = load_params(SMOKE, k_test=2)
    assert curation.chain_of(curation.run_name("low_train_acc", 2, 11)) == ("low_train_acc", 2, 11)
    pool = tasks.load_task("arith", "train", 9, seed=4)
    files = {"premem_r1_seed0": pool[:3], "iid_r1_seed0": pool[3:5], "premem_r2_seed0": pool[5:9]}
    for name, exs in files.items():
        curation.write_examples(tmp_path / "collected" / f"{name}.jsonl", exs)
    right = {ex.question for ex in pool[::2]}  # the judge gets pool[0], [2], [4], ... right, the others wrong
    judges = []
    monkeypatch.setattr(record, "final_checkpoint", lambda folder, run: run)
    monkeypatch.setattr(model_lib, "load_base", lambda run, **kw: (run, None))
    monkeypatch.setattr(tasks, "format_prompt",
                        lambda ex, t: ex.question if ex.question in right else "wrong:" + ex.question)
    monkeypatch.setattr(curation_judge, "n_steps", lambda ex: len(ex.question))

    def fake_sample(cfg_, lm, ckpt, tok, prompts, k, seed):  # the gold answer where the prompt is "right"
        judges.append(lm)
        gold = {ex.question: ex.answer for ex in pool}
        return [[f"{tasks.MARKER} {-1 if p.startswith('wrong:') else gold[p]}"] * k for p in prompts]
    monkeypatch.setattr(recorder, "sample_answers", fake_sample)
    got = curation.collected_accuracy(cfg, tmp_path, progress=False).set_index(["strategy", "round"])
    # pool[0..2]: right, wrong, right; pool[3..4]: wrong, right; pool[5..8]: wrong, right, wrong, right
    assert got.accuracy.to_dict() == {("iid", 1): 0.5, ("premem", 1): 2 / 3, ("premem", 2): 0.5}
    assert got.judge.to_dict() == {("iid", 1): "originals_seed0", ("premem", 1): "originals_seed0",
                                   ("premem", 2): "premem_r1_seed0"}
    assert got.n_collected.to_dict() == {("iid", 1): 2, ("premem", 1): 3, ("premem", 2): 4}
    assert got.loc[("premem", 2), "mean_steps"] == np.mean([len(ex.question) for ex in pool[5:9]])
    assert sorted(judges) == ["originals_seed0", "premem_r1_seed0"]  # one load and one sampling per judge
    # Cached: a rerun samples nothing, and a new collected file is judged alone.
    curation.write_examples(tmp_path / "collected" / "iid_r2_seed0.jsonl", pool[:1])
    again = curation.collected_accuracy(cfg, tmp_path, progress=False).set_index(["strategy", "round"])
    assert judges[2:] == ["iid_r1_seed0"] and again.loc[("iid", 2), "accuracy"] == 1.0
    pd.testing.assert_series_equal(again.accuracy.drop(("iid", 2)), got.accuracy)


def test_data_efficiency_by_hand():
    assert curation.iid_examples_needed([200, 100], [.4, .2], .3) == (150.0, "interpolated")
    assert curation.iid_examples_needed([100, 200], [.2, .4], .5) == (np.inf, "above_iid_max")
    assert curation.iid_examples_needed([100, 200], [.2, .4], .1) == (100.0, "at_or_below_start")
    n, flag = curation.iid_examples_needed([100, 200], [.2, .4], np.nan)
    assert np.isnan(n) and flag == "nan"
    # a dip: the first crossing counts
    assert curation.iid_examples_needed([100, 200, 300, 400], [.2, .4, .1, .5], .3) == (150.0, "interpolated")
    table = pd.DataFrame(dict(strategy=["iid", "iid", "iid", "premem", "premem"], round=[0, 1, 1, 0, 1],
                              seed=[0, 0, 1, 0, 0], n_examples=[100, 200, 200, 100, 100],
                              test_acc=[.2, .35, .45, .2, .3]))
    eff = curation.data_efficiency(table)
    assert eff.drop(columns=["ratio_lo", "ratio_hi"]).to_dict("records") == [dict(
        strategy="premem", round=1, n_examples=100, test_acc=.3, iid_examples=150.0, ratio=1.5, flag="interpolated",
        n_seeds=2)]
    # Bootstrap over the two seeds: the premem run exists for seed 0 only, so resamples of seed 1
    # alone measure nothing; seeds {0, 1} give 1.5 (p = 1/2), seed 0 twice an IID round 1 at .35:
    # 100 + 100 * .1 / .15 examples, ratio 5/3 (p = 1/4).
    assert eff.loc[0, "ratio_lo"] == pytest.approx(1.5) and eff.loc[0, "ratio_hi"] == pytest.approx(5 / 3)
    assert curation.data_efficiency(table[table.seed == 0])[["ratio_lo", "ratio_hi"]].isna().all(axis=None)
    with pytest.raises(PremError, match="'iid'"):
        curation.data_efficiency(table[table.strategy != "iid"])


def test_paired_gaps_by_hand():
    rows = [("premem", 0, s, 100, .5) for s in range(3)] + [
        ("premem", 1, 0, 150, .60), ("premem", 1, 1, 150, .55), ("premem", 1, 2, 150, .70),
        ("iid", 1, 0, 150, .50), ("iid", 1, 1, 150, .60), ("iid", 1, 2, 150, .60),
        ("iid", 2, 0, 200, .65),  # premem has no round 2: no row
        ("most_steps", 1, 0, 150, .60), ("most_steps", 1, 1, 150, .50)]  # seed 2 did not run it
    table = pd.DataFrame(rows, columns=["strategy", "round", "seed", "n_examples", "test_acc"])
    gaps = curation.paired_gaps(table).set_index("strategy")
    assert list(gaps.index) == ["iid", "most_steps"] and (gaps["round"] == 1).all()
    # iid: per-seed gaps .10, -.05, .10; most_steps: .00, .05 over the two seeds both ran
    assert gaps.loc["iid", "gap"] == pytest.approx(.05) and gaps.loc["iid", "wins"] == 2
    assert gaps.loc["most_steps", "gap"] == pytest.approx(.025) and gaps.loc["most_steps", "n_seeds"] == 2
    assert gaps.loc["most_steps", "wins"] == 1 and gaps.loc["iid", "n_examples"] == 150
    # paired t: sd of {.10, -.05, .10} is .0866, t(0.975, 2 df) = 4.303: .05 -/+ .2151; past the seeds' range
    assert gaps.loc["iid", "gap_lo"] == pytest.approx(.05 - 4.3027 * .086603 / 3 ** .5, abs=1e-4)
    assert gaps.loc["iid", "gap_hi"] == pytest.approx(.05 + 4.3027 * .086603 / 3 ** .5, abs=1e-4)
    # most_steps: {.00, .05}, sd .035355, t(0.975, 1 df) = 12.706
    assert gaps.loc["most_steps", "gap_hi"] - .025 == pytest.approx(12.706 * .035355 / 2 ** .5, abs=1e-4)
    one = curation.paired_gaps(table[table.seed == 0])
    assert one[["gap_lo", "gap_hi"]].isna().all(axis=None) and (one.n_seeds == 1).all()
    with pytest.raises(PremError, match="'forgetting'"):
        curation.paired_gaps(table, reference="forgetting")


def test_curation_k_replaces_k_for_the_originals_only():
    cfg = load_params(SMOKE, k=4, k_test=None)
    plain = curation.curation_params(cfg)
    assert (plain.k, plain.k_test) == (4, None)
    assert curation.curation_params(cfg.model_copy(update=dict(curation_k=None))).hash(*CURATION_KEYS) == \
        plain.hash(*CURATION_KEYS)  # unset: the same folder as before the key existed
    more = curation.curation_params(cfg.model_copy(update=dict(curation_k=16)))
    assert (more.k, more.k_test, more.curation_k) == (16, 4, None)  # test accuracy still from k samples
    assert more.hash(*CURATION_KEYS) != plain.hash(*CURATION_KEYS)
    assert curation.curation_params(more) == more  # folding it in twice changes nothing
    explicit = curation.curation_params(cfg.model_copy(update=dict(curation_k=16, k_test=2)))
    assert (explicit.k, explicit.k_test) == (16, 2)


def test_smoke_curation_round_and_cached_rerun(tmp_path, monkeypatch):
    cfg = load_params(SMOKE, workers=1, n_train=8, n_test=4, n_heldout=2, k=1, curation_k=2, max_new_tokens=30,
                      epochs=[3], curation_max_checkpoints=2,  # checkpoints at epochs 2 and 3: test sampled at 3 only
                      curation_rounds=[4], curation_iid_rounds=None, curation_strategies=["premem", "ifd", "iid"],
                      cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "runs"))
    with single_thread():
        out = curation.curate(cfg, progress=False)
    # The folder is named by the record keys and the curation keys: new budgets, a new folder; a
    # new sweep grid (which curation does not train) keeps the folder.
    hashed = curation.curation_params(cfg).hash(*CURATION_KEYS)
    assert out == tmp_path / "runs" / f"curation-{hashed}" == curation.folder_of(cfg)
    for key, value in dict(curation_threshold=0.5, curation_max_checkpoints=3).items():
        assert curation.curation_params(cfg.model_copy(update={key: value})).hash(*CURATION_KEYS) != hashed
    regrid = cfg.model_copy(update=dict(lrs=cfg.lrs + [9e-3], epochs=cfg.epochs + [40], data_fractions=[1.0, .5],
                                        max_checkpoints=7))
    assert curation.curation_params(regrid).hash(*CURATION_KEYS) == hashed
    more = cfg.model_copy(update={"curation_seeds": [0, 1], "curation_strategies": ["premem"],
                                  "n_train": 64, "curation_originals": cfg.n_train})
    assert curation.curation_params(more).hash(*CURATION_KEYS) == hashed
    table = pd.read_parquet(out / "curation.parquet")
    assert table[["strategy", "round", "n_examples", "n_new"]].values.tolist() == [
        ["ifd", 0, 8, 0], ["ifd", 1, 12, 4], ["iid", 0, 8, 0], ["iid", 1, 12, 4], ["premem", 0, 8, 0],
        ["premem", 1, 12, 4]]
    assert table.test_acc.between(0, 1).all() and (out / "config.json").exists()
    assert {p.name for p in out.iterdir()} - {record_folder.LOCK} <= set(record_folder.OWN_ENTRIES)  # --force may delete them
    assert set(pd.read_parquet(out / "efficiency.parquet").strategy) == {"ifd", "premem"}
    runs = pd.read_parquet(out / "runs.parquet").set_index("run")
    assert runs.n_train.to_dict() == {"originals_seed0": 8, "ifd_r1_seed0": 12, "iid_r1_seed0": 12,
                                      "premem_r1_seed0": 12}
    dyns = {d.run: d for d in record.read_runs(out)}
    assert len(dyns) == 4
    # Recorded: the 8 originals only, test accuracy at the final checkpoint only. The originals' run
    # feeds premem's selection, which reads every checkpoint; the chains' last runs record (and
    # save) their last checkpoint alone, and have no pre-memorization history.
    originals = set(dyns["originals_seed0"].example_ids)
    assert all(set(d.example_ids) == originals and len(originals) == 8 for d in dyns.values())
    first = dyns.pop("originals_seed0")
    assert len(first.steps) == 2 and np.isnan(first.test_acc[0]) and not np.isnan(first.test_acc[1])
    assert all(len(d.steps) == 1 and d.epoch_of_step[0] == cfg.epochs[0] for d in dyns.values())
    assert all(len(list((out / "runs" / run / "train").glob("checkpoint-*"))) == 1 for run in dyns)
    assert table.pre_mem_acc.notna().tolist() == [r == 0 for r in table["round"]]
    # Nor claim 2's baseline predictors, which no rule reads (a backward pass per minibatch saved).
    stats = pd.read_parquet(out / "checkpoints.parquet")
    assert len(stats) == 5 and stats[["param_distance", "grad_variance"]].isna().all().all()
    samples = pd.read_parquet(out / "samples.parquet")
    per_query = samples.groupby(["split", "run", "step", "example_id"]).size()
    assert set(per_query["train"]) == {2} and set(per_query["test"]) == {1}  # curation_k; k_test (None: k)
    last = samples.groupby("run").step.transform("max")
    assert set(samples[samples.split == "test"].step) <= set(last) and (samples.split == "test").any()
    assert samples[samples.split == "test"].pipe(lambda t: (t.step == last[t.index]).all())
    sel = pd.read_parquet(out / "selections" / "premem_r1_seed0.parquet")
    assert sel.n_new.sum() == 4 and sel[sel.n_new > 0].pre_mem_acc.le(0.75).all() | sel.fallback.all()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = json.loads((out / "base.json").read_text())  # the base model's own test accuracy
    assert base["n_test"] == cfg.n_test and base["k"] == (cfg.k_test or cfg.k) and 0 <= base["test_acc"] <= 1
    assert curation.base_test_acc(out) == base["test_acc"]
    with pytest.raises(PremError, match="no base.json"):
        curation.base_test_acc(tmp_path)
    fig, ax = plt.subplots()
    curation.plot_scaling(table, ax, base_acc=0.125)
    assert [list(line.get_ydata()) for line in ax.lines if line.get_linestyle() == ":"] == [[0.125, 0.125]]
    plt.close(fig)
    collected = curation.read_examples(out / "collected" / "premem_r1_seed0.jsonl")
    assert sorted(e.meta["similar_to"] for e in collected) == sorted(sel.example_id.repeat(sel.n_new))

    # Under a launcher of jobs the graph goes a level at a time, its runs as job arrays (submitit's
    # debug executor runs them here): the same runs, collections, tables and judgements.
    jobs = cfg.model_copy(update=dict(launcher="slurm", slurm_cluster="debug"))
    with single_thread():
        levels = curation.curate(jobs, out=tmp_path / "levels", progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(levels / "curation.parquet"), table)
    assert (levels / "collected" / "premem_r1_seed0.jsonl").read_text() == \
        (out / "collected" / "premem_r1_seed0.jsonl").read_text()
    pd.testing.assert_frame_equal(curation.collected_accuracy(cfg, levels, progress=False),
                                  curation.collected_accuracy(cfg, out, progress=False))

    def refuse(*a, **k):
        raise AssertionError("a cached curation must not train, sample or score")
    for mod, name in [(training, "finetune"), (sampling, "sample"), (perplexity, "target_nll")]:
        monkeypatch.setattr(mod, name, refuse)
    graphs = []
    monkeypatch.setattr(launcher, "run_graph", lambda fn, nodes, workers, on_done=None: graphs.append(nodes))
    assert curation.curate(cfg, progress=False) == out
    assert graphs == [{}]  # every step finished: no worker to start
    pd.testing.assert_frame_equal(pd.read_parquet(out / "curation.parquet"), table)
    # The curation judged each collection under the run that chose it as it went: cached, no sampling.
    judged = curation.collected_accuracy(cfg, out, progress=False)
    assert judged[["strategy", "round", "judge", "n_collected"]].values.tolist() == [
        ["ifd", 1, "originals_seed0", 4], ["iid", 1, "originals_seed0", 4], ["premem", 1, "originals_seed0", 4]]
    assert judged.accuracy.between(0, 1).all()
