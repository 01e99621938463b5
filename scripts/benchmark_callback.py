"""What PreMemCallback costs on the CPU default: training wall time without it, and with it
recording every epoch on a fraction of the training examples (and, with --test, the test set too).

The CPU default's base (models/) is finetuned by the plain transformers Trainer on params/tiny.yaml's
training examples, written as a user's JSON Lines, at one lr for some epochs, saving every epoch.
Recording restores the RNG streams, so every configuration trains the same weights: each
subsample's pre-mem estimate is compared with the full set's value at the same checkpoint, against
the 95% interval the callback reported. Not a test: run it and read the table.

    .venv/bin/python scripts/benchmark_callback.py --fractions 0.1 1.0 --out runs/benchmark-callback
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def user_files(cfg, folder: Path) -> dict:
    """params/tiny.yaml's train, test and held-out examples as a user's JSON Lines."""
    from premem import data as data_lib

    train, test, heldout = data_lib.load_examples(cfg, heldout=True)
    files = {}
    for split, examples in (("train", train), ("test", test), ("heldout", heldout)):
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(dict(question=ex.question, solution=ex.solution, answer=ex.answer,
                                                        id=ex.id)) + "\n" for ex in examples))
    return files


def train_once(cfg, base: str, files: dict, out: Path, *, lr: float, epochs: int, callback: dict | None) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from premem import PreMemCallback, encoding, model as model_lib, tasks

    lm, tok = model_lib.load_base(base)
    train = tasks.read_jsonl(files["train"], "train", id="id")
    features = encoding.build_features(tok, [tasks.format_prompt(ex, cfg.prompt_template) for ex in train],
                                       [tasks.format_target(ex, cfg.target_template) for ex in train])
    args = TrainingArguments(output_dir=str(out / "train"), num_train_epochs=epochs, learning_rate=lr,
                             per_device_train_batch_size=cfg.batch_size, warmup_steps=cfg.warmup_ratio,  # < 1: a ratio
                             save_strategy="epoch", save_only_model=True, logging_strategy="epoch", report_to="none",
                             seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=lm, args=args, train_dataset=encoding.ListDataset(features),
                      data_collator=encoding.CompletionCollator(tok.pad_token_id), processing_class=tok)
    logged = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "premem/pre_mem_acc" in logs:
                logged.append(dict(logs, step=state.global_step))

    trainer.add_callback(Keep())
    if callback is not None:
        trainer.add_callback(PreMemCallback(trainer, files["train"], params=cfg, heldout=files["heldout"],
                                            out=out / "record", **callback))
    t0 = time.perf_counter()
    trainer.train()
    return dict(seconds=time.perf_counter() - t0, logged=logged)


def main(argv=None) -> int:
    from premem import bases
    from premem.config import load_params

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default=str(ROOT / "params" / "tiny.yaml"))
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--every", type=int, nargs="+", default=[1], help="record every n epochs (each fraction at each)")
    p.add_argument("--test", action="store_true", help="the callback also samples the test set at every epoch")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmark-callback"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # one thread beats two for ~1M-parameter models on these machines
    default = load_params(a.params)
    base = bases.base_model_path(default, progress=False)  # the shipped base of the CPU default
    cfg = default.model_copy(update=dict(task="jsonl", task_options=dict(id="id")))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, by_fraction = [], {}  # (fraction, every) -> what the callback logged
    with tempfile.TemporaryDirectory() as tmp:
        files = user_files(default, Path(tmp))
        plain = train_once(cfg, base, files, Path(tmp) / "none", lr=a.lr, epochs=a.epochs, callback=None)
        rows.append(dict(callback="none", fraction=None, seconds=round(plain["seconds"], 1), overhead=0.0))
        for f in a.fractions:
            for every in a.every:
                test = dict(test=files["test"]) if a.test else {}
                got = train_once(cfg, base, files, Path(tmp) / f"f{f}-e{every}", lr=a.lr, epochs=a.epochs,
                                 callback=dict(fraction=f, every_epochs=every, **test))
                by_fraction[(f, every)] = pd.DataFrame(got["logged"])
                rows.append(dict(callback=f"every {every} epochs" + (" + test" if a.test else ""), fraction=f,
                                 seconds=round(got["seconds"], 1),
                                 overhead=round(got["seconds"] / plain["seconds"] - 1, 3)))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    checks = []
    for (f, every), logs in by_fraction.items():
        logs.assign(fraction=f, every=every).to_parquet(out / f"logged-f{f}-e{every}.parquet")
        # What a subsample estimates: the full set recorded at the same checkpoints (pre-mem accuracy
        # depends on which checkpoints are recorded: memorisation is only seen where one is).
        if f == 1.0 or (1.0, every) not in by_fraction:
            continue
        ref = by_fraction[(1.0, every)].set_index("step")["premem/pre_mem_acc"]
        logs = logs.set_index("step")
        ref = ref.reindex(logs.index)
        inside = (logs["premem/pre_mem_acc_lo"] <= ref) & (ref <= logs["premem/pre_mem_acc_hi"])
        checks.append(dict(fraction=f, every=every, checkpoints=len(logs), full_inside_interval=int(inside.sum()),
                           max_abs_error=round(float((logs["premem/pre_mem_acc"] - ref).abs().max()), 3),
                           mean_interval_width=round(float((logs["premem/pre_mem_acc_hi"]
                                                            - logs["premem/pre_mem_acc_lo"]).mean()), 3)))
    print(pd.DataFrame(checks).to_string(index=False))
    (out / "benchmark.json").write_text(json.dumps(dict(
        params=a.params, lr=a.lr, epochs=a.epochs, test=a.test, times=rows, estimates=checks,
        machine=dict(threads=1, python=sys.version.split()[0], torch=torch.__version__)), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
