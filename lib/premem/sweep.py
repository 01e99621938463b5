"""The sweep: finetune under a grid of configurations and record every checkpoint.

For each run (lr x epochs x data fraction x seed): finetune from the base model, saving a checkpoint
per epoch; at each checkpoint sample k answers for every training and test query, grade them, and
compute the perplexity of every training target. Everything is cached: trainer checkpoints resume,
each recorded checkpoint is a set of parquet parts written atomically, and a finished run is marked
done, so a killed sweep rerun recomputes nothing that finished and yields identical tables.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from premem import io, record
from premem.config import Params
from premem.errors import PremError


SHIPPED_MODELS = "models"  # base models the repository carries, named by content hash
GRAD_VARIANCE_BATCHES = 4  # minibatches whose gradients give the gradient-variance predictor
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class RunSpec:
    run: str
    lr: float
    epochs: int
    data_fraction: float
    seed: int


def grid(cfg: Params) -> list[RunSpec]:
    specs = []
    for lr, epochs, frac, seed in itertools.product(cfg.lrs, cfg.epochs, cfg.data_fractions, cfg.seeds):
        if not 0 < frac <= 1:
            raise PremError(f"data_fractions: {frac} is not in (0, 1]")
        # The name is for people; the values live in runs.parquet and are never parsed back.
        specs.append(RunSpec(f"lr{lr:g}_ep{epochs}_frac{frac:g}_seed{seed}", lr, epochs, frac, seed))
    return specs


def load_examples(cfg: Params, heldout: bool = False):
    """(train, test) examples; with heldout=True also the held-out training examples.

    Held-out examples come from the training split but no run trains on them: their perplexity at
    every checkpoint shows what a solution the model never saw scores, which calibrates the
    memorization threshold without test labels (`premem.metrics.calibrate_tau`).
    """
    from premem import tasks

    options = dict(cfg.task_options)
    if cfg.data_files:
        options["data_files"] = cfg.data_files
    pool = tasks.load_task(cfg.task, split="train", n=cfg.n_train + cfg.n_heldout, seed=cfg.data_seed, **options)
    train, held = pool[:cfg.n_train], pool[cfg.n_train:]
    test = tasks.load_task(cfg.task, split="test", n=cfg.n_test, seed=cfg.data_seed, **options)
    if not train:
        raise PremError(f"task '{cfg.task}' gave an empty training set")
    return (train, test, held) if heldout else (train, test)


def train_subset(train, spec: RunSpec):
    """Nested subsets: the first round(f * n) of one fixed permutation, so quarter is inside half."""
    order = np.random.default_rng(12345).permutation(len(train))
    m = max(1, int(round(spec.data_fraction * len(train))))
    return [train[i] for i in sorted(order[:m])]


def base_model_path(cfg: Params, progress: bool = True) -> str:
    """The base model to finetune: the embedded recipe is pretrained once and cached by content hash."""
    if cfg.base_model != "embedded":
        local = cfg.path("base_model")  # a folder relative to the project root, or a hub id
        return str(local) if local.exists() else cfg.base_model
    from premem import model, tasks
    from premem.config import project_root

    own = cfg.embedded_pretrain_task_options
    try:
        pool = tasks.load_task(cfg.task, split="pretrain", n=cfg.embedded_pretrain_examples, seed=cfg.data_seed,
                               **(cfg.task_options if own is None else own))
    except PremError as e:
        if own is None:
            raise
        raise PremError(f"embedded_pretrain_task_options: {e}") from None
    texts = [tasks.format_prompt(ex, cfg.prompt_template) + tasks.format_target(ex, cfg.target_template)
             for ex in pool]
    return str(model.build_embedded_base(
        texts, cache_dir=cfg.path("cache_dir") / "embedded", d_model=cfg.embedded_d_model,
        n_layers=cfg.embedded_n_layers, n_heads=cfg.embedded_n_heads, steps=cfg.embedded_steps,
        lr=cfg.embedded_lr, batch_size=cfg.embedded_batch_size, seq_len=cfg.embedded_seq_len,
        seed=cfg.data_seed, tokenizer=cfg.embedded_tokenizer, vocab_size=cfg.embedded_vocab_size,
        progress=progress, search_dirs=[project_root() / SHIPPED_MODELS],
    ))


def save_every(cfg: Params, epochs: int) -> int:
    if cfg.max_checkpoints is None:
        return cfg.save_every_epochs
    return max(cfg.save_every_epochs, -(-epochs // cfg.max_checkpoints))


def part_done(run_dir: Path, step: int) -> bool:
    return all(record.part_path(run_dir, t, step).exists() for t in record.TABLES)


def sample_answers(cfg: Params, lm, checkpoint, tok, prompts: list[str], k: int, seed: int,
                   progress: bool = False) -> list[list[str]]:
    """`sampling.sample` with the params' decoding keys: vLLM loads the weights itself, from the
    `checkpoint` folder (or hub id); the transformers backend samples the loaded `lm`."""
    from premem import sampling

    return sampling.sample(
        str(checkpoint) if cfg.backend == "vllm" else lm, tok, prompts, k=k, temperature=cfg.temperature,
        top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop=cfg.stop, seed=seed,
        batch_size=cfg.sample_batch_size, backend=cfg.backend, progress=progress)


def record_checkpoint(cfg: Params, spec: RunSpec, run_dir: Path, step: int, epoch: int, lm, tok,
                      train, test, init_state, heldout=()) -> None:
    """Samples, grades and perplexities at one checkpoint, written as parquet parts: `train` (the
    examples recorded) sampled and scored, `test` sampled (empty: none), `heldout` scored."""
    from premem import grading, perplexity, tasks, training

    if part_done(run_dir, step):
        return
    seed = cfg.data_seed * 1_000_003 + spec.seed * 10_007 + step  # independent of what ran before
    rows = []
    for split, examples, k in (("train", train, cfg.k), ("test", test, cfg.k_test or cfg.k)):
        prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in examples]
        # The checkpoint folder the trainer has just written, for vLLM.
        completions = sample_answers(cfg, lm, run_dir / "train" / f"checkpoint-{step}", tok, prompts, k, seed)
        for ex, outs in zip(examples, completions):
            for j, g in enumerate(grading.grade_many(outs, ex.answer)):
                rows.append(dict(run=spec.run, step=step, epoch=epoch, split=split, example_id=ex.id,
                                 sample_idx=j, correct=g.correct, correct_strict=g.correct_strict,
                                 parse_ok=g.parse_ok, answer=g.answer))
    scored = list(train) + list(heldout)
    prompts = [tasks.format_prompt(ex, cfg.prompt_template) for ex in scored]
    targets = [tasks.format_target(ex, cfg.target_template) for ex in scored]
    nll, n_tokens = perplexity.target_nll(lm, tok, prompts, targets, batch_size=cfg.perplexity_batch_size,
                                          progress=False)
    ppl = pd.DataFrame(dict(run=spec.run, step=step, epoch=epoch, example_id=[ex.id for ex in scored],
                            trained=[i < len(train) for i in range(len(scored))],
                            nll=nll, n_tokens=n_tokens, perplexity=perplexity.perplexity(nll, n_tokens)))
    prompts, targets = prompts[:len(train)], targets[:len(train)]
    stats = pd.DataFrame([dict(
        run=spec.run, step=step, epoch=epoch, param_distance=training.param_distance(lm, init_state),
        grad_variance=training.gradient_variance(lm, tok, prompts, targets, batch_size=cfg.batch_size,
                                                 n_batches=GRAD_VARIANCE_BATCHES, seed=seed),
    )])
    io.write_parquet(record.part_path(run_dir, "perplexity", step), ppl)
    io.write_parquet(record.part_path(run_dir, "checkpoints", step), stats)
    io.write_parquet(record.part_path(run_dir, "samples", step), pd.DataFrame(rows))


def finetune_on(cfg: Params, lm, tok, train, output_dir, spec: RunSpec, epochs: int, save_every_epochs: int,
                on_checkpoint=None) -> list[dict]:
    """`training.finetune` on examples, with the params' prompt format and optimiser keys; the
    training of every recorded run, and of curation's IFD probes."""
    from premem import tasks, training

    return training.finetune(
        lm, tok, [tasks.format_prompt(ex, cfg.prompt_template) for ex in train],
        [tasks.format_target(ex, cfg.target_template) for ex in train],
        output_dir=output_dir, lr=spec.lr, epochs=epochs, batch_size=cfg.batch_size,
        warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        seed=spec.seed, save_every_epochs=save_every_epochs, lora=cfg.lora, on_checkpoint=on_checkpoint,
        progress=False,
    )


def train_and_record(cfg: Params, spec: RunSpec, train, test, record_dir: str | Path, base_path: str,
                     heldout=(), recorded=None, test_final_only: bool = False, final_only: bool = False) -> Path:
    """Finetune `base_path` on `train` and record every checkpoint; resumes after a kill.

    The building block of a sweep, and of anything that trains on its own example lists (data
    curation trains on originals plus collected examples). `recorded`: the training examples whose
    accuracy and perplexity are recorded (default: all of `train`); test_final_only samples the test
    set at the last checkpoint alone (earlier ones read NaN). Curation uses both: it needs the
    originals' dynamics and the final test accuracy, and sampling is most of a run's cost.
    final_only saves and records the last checkpoint alone (no resume point inside the run): for
    runs whose dynamics nobody reads, only their final accuracies. Returns the run folder.
    """
    from premem import model as model_lib, training

    run_dir = Path(record_dir) / "runs" / spec.run
    if (run_dir / "done.json").exists():
        return run_dir
    if not train:
        raise PremError(f"run {spec.run}: empty training set")
    io.write_json(run_dir / "run.json", dict(asdict(spec), n_train=len(train), example_ids=[ex.id for ex in train]))
    lm, tok = model_lib.load_base(base_path, cache_dir=cfg.path("cache_dir"), dtype=cfg.dtype,
                                  quantization=cfg.quantization)
    if cfg.lora is not None:
        lm = training.apply_lora(lm, cfg.lora, seed=spec.seed)  # before the snapshot: same parameter names
    init_state = training.snapshot(lm)

    recorded = train if recorded is None else recorded

    def on_checkpoint(step, epoch, model):
        sampled = test if epoch == spec.epochs or not test_final_only else []
        record_checkpoint(cfg, spec, run_dir, step, epoch, model, tok, recorded, sampled, init_state, heldout)

    every = spec.epochs if final_only else save_every(cfg, spec.epochs)
    ckpts = finetune_on(cfg, lm, tok, train, run_dir / "train", spec, spec.epochs, every, on_checkpoint)
    missing = [c["step"] for c in ckpts if not part_done(run_dir, c["step"])]
    if missing:
        raise PremError(f"run {spec.run}: checkpoints {missing} finished training but were never recorded")
    if cfg.keep_checkpoints == "last":  # recorded: only the final weights are needed later
        for c in ckpts[:-1]:
            for name in WEIGHT_FILES:
                (Path(c["path"]) / name).unlink(missing_ok=True)
    io.write_json(run_dir / "done.json", dict(checkpoints=[int(c["step"]) for c in ckpts]))
    return run_dir


def _run_job(cfg_json: str, spec: RunSpec, train, test, heldout, record_dir: str, base_path: str,
             recorded=None, test_final_only: bool = False, final_only: bool = False) -> str:
    train_and_record(Params.model_validate_json(cfg_json), spec, train, test, record_dir, base_path, heldout,
                     recorded, test_final_only, final_only)
    return spec.run


def _at_one_thread(fn, args):
    import torch

    torch.set_num_threads(1)
    quiet_libraries()
    return fn(*args)


def map_one_thread(fn, args: list[tuple], workers: int, on_done=None) -> list:
    """[fn(*a) for a in args], each at one torch thread: in `workers` spawned processes (for
    ~1M-parameter models far faster than one process with several threads), or here with one worker
    or one job. Float reductions, hence weights and samples, then do not depend on the worker count.
    `fn` must be importable (module level); on_done(result) is called as each job finishes."""
    import torch

    if workers == 1 or len(args) < 2:
        threads = torch.get_num_threads()
        results = []
        try:
            for a in args:
                results.append(_at_one_thread(fn, a))
                if on_done is not None:
                    on_done(results[-1])
        finally:
            torch.set_num_threads(threads)
        return results
    with ProcessPoolExecutor(min(workers, len(args)), mp_context=_spawn_context()) as pool:
        futures = [pool.submit(_at_one_thread, fn, a) for a in args]
        for f in as_completed(futures):
            if on_done is not None:
                on_done(f.result())
        return [f.result() for f in futures]


def run_jobs(cfg: Params, jobs: dict, test, heldout, record_dir: str | Path, base_path: str, bar=None,
             recorded=None, test_final_only: bool = False, final_only=()) -> None:
    """Train and record each run of `jobs` ({RunSpec: training examples}) not yet done
    (`recorded`, `test_final_only`: as in train_and_record, for every job; `final_only`: the names
    of the runs recorded at their last checkpoint alone), in cfg.workers one-thread processes
    (map_one_thread)."""
    todo = {s: t for s, t in jobs.items() if not (Path(record_dir) / "runs" / s.run / "done.json").exists()}
    if bar is not None:
        bar.update(len(jobs) - len(todo))
    args = [(cfg.model_dump_json(), s, t, test, heldout, str(record_dir), base_path, recorded, test_final_only,
             s.run in final_only) for s, t in todo.items()]

    def done(run):
        if bar is not None:
            bar.set_postfix_str(run)
            bar.update()

    map_one_thread(_run_job, args, cfg.workers, done)


def quiet_libraries() -> None:
    """Keep worker output to our own progress bars: no per-save bars or backend notices."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("bitsandbytes", "math_verify", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_examples(record_dir: str | Path, run: str, cfg: Params | None = None):
    """(train examples of `run`, test examples) as the sweep used them, from run.json's ids."""
    record_dir = Path(record_dir)
    cfg = cfg or record.read_config(record_dir)
    info = json.loads((record_dir / "runs" / run / "run.json").read_text())
    train_all, test = load_examples(cfg)
    by_id = {ex.id: ex for ex in train_all}
    missing = [i for i in info["example_ids"] if i not in by_id]
    if missing:
        raise PremError(f"run {run}: training examples {missing[:3]} are not in task '{cfg.task}' as configured")
    return [by_id[i] for i in info["example_ids"]], test


def final_checkpoint(record_dir: str | Path, run: str) -> Path:
    """The last checkpoint folder of a finished run (its weights are always kept)."""
    from premem.training import finished_checkpoints

    ckpts = finished_checkpoints(Path(record_dir) / "runs" / run / "train")
    if not ckpts:
        raise PremError(f"run {run}: no finished checkpoints under {Path(record_dir) / 'runs' / run / 'train'}")
    return Path(ckpts[-1]["path"])


def versions() -> dict:
    """Versions of the packages that shape a record; None for one not installed (premem itself
    when run from a source tree on PYTHONPATH, as on a bare GPU machine)."""
    from importlib.metadata import PackageNotFoundError, version

    def get(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    names = ["premem", "torch", "transformers", "trl", "peft", "numpy", "pandas"]
    return dict(python=platform.python_version(), **{n: get(n) for n in names})


def prepare_record_dir(cfg: Params, out: Path, force: bool, extra_keys: tuple[str, ...] = ()) -> None:
    """A record folder belongs to one config: refuse to mix, unless --force starts it afresh."""
    config_file = out / "config.json"
    new = cfg.hash(*extra_keys)
    if config_file.exists():
        old = json.loads(config_file.read_text()).get("hash")
        if old != new and not force:
            raise PremError(f"{out} holds a record of another config (hash {old}, now {new}): "
                            "choose another --out or pass --force")
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(config_file, dict(hash=new, params=cfg.model_dump(mode="json"), versions=versions()))


def sweep(cfg: Params, out: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Run the whole grid; returns the record folder, which `premem fit` reads."""
    from tqdm.auto import tqdm

    out = Path(out) if out else cfg.path("out_dir") / f"{cfg.name}-{cfg.hash()}"
    specs = grid(cfg)
    train_all, test, heldout = load_examples(cfg, heldout=True)  # a bad task fails before the folder is touched
    prepare_record_dir(cfg, out, force)
    base = base_model_path(cfg, progress=progress)
    bar = tqdm(total=len(specs), desc=f"sweep {cfg.name}", unit="run", disable=not progress)
    run_jobs(cfg, {s: train_subset(train_all, s) for s in specs}, test, heldout, out, base, bar)
    bar.close()
    finish(out, specs)
    return out


def _spawn_context():
    """Worker processes start fresh (spawn): forking a process whose torch thread pool has run can hang."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def finish(out: Path, specs: list[RunSpec]) -> None:
    """Concatenate per-checkpoint parts into the top-level tables (identical on every rerun)."""
    runs = pd.DataFrame([asdict(s) | {"n_train": json.loads((out / "runs" / s.run / "run.json").read_text())["n_train"]}
                         for s in specs]).sort_values("run").reset_index(drop=True)
    for table in record.TABLES:
        io.write_parquet(out / f"{table}.parquet", record.concat_parts(out, table))
    io.write_parquet(out / "runs.parquet", runs)
