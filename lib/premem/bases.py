"""Which base model a params file finetunes: one premem knows by name (model.NAMED_BASES), a local
folder, a hub id, or the embedded recipe's folder (premem.embedded pretrains it once, cached by a
content hash of its texts and settings; the CPU default's ships in models/).

Finding the embedded base means drawing its pretraining texts (the default's 20,000 take ~2 s):
once per process, and not at all in a process that finds the recipe noted beside the cache.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path

import premem
from premem import embedded, io, tasks
from premem import model as model_lib
from premem.config import Params, project_root
from premem.errors import PremError

SHIPPED_MODELS = "models"  # base models the repository carries, named by content hash


@functools.lru_cache(maxsize=4)
def _pretraining_texts(task: str, n: int, seed: int, options: str, prompt_template: str,
                       target_template: str) -> tuple[str, ...]:
    """The embedded base's pretraining texts, whose content hash names it: drawn once per process (a
    test session sweeps and curates many times)."""
    pool = tasks.load_task(task, split="pretrain", n=n, seed=seed, **json.loads(options))
    return tuple(tasks.format_prompt(ex, prompt_template) + tasks.format_target(ex, target_template) for ex in pool)


def base_model_path(cfg: Params, progress: bool = True) -> str:
    """The base model to finetune: the embedded recipe is pretrained once and cached by content hash."""
    named = model_lib.named_base(cfg.base_model)  # one premem knows by name (model.NAMED_BASES)
    if named:
        return named
    if cfg.base_model != "embedded":
        local = cfg.path("base_model")  # a folder relative to the project root, or a hub id
        return str(local) if local.exists() else cfg.base_model

    own = cfg.embedded_pretrain_task_options
    recipe = (cfg.task, cfg.embedded_pretrain_examples, cfg.data_seed,
              json.dumps(cfg.task_options if own is None else own, sort_keys=True), cfg.prompt_template,
              cfg.target_template)
    options = dict(cache_dir=cfg.path("cache_dir") / "embedded", d_model=cfg.embedded_d_model,
                   n_layers=cfg.embedded_n_layers, n_heads=cfg.embedded_n_heads, steps=cfg.embedded_steps,
                   lr=cfg.embedded_lr, batch_size=cfg.embedded_batch_size, seq_len=cfg.embedded_seq_len,
                   seed=cfg.data_seed, tokenizer=cfg.embedded_tokenizer, vocab_size=cfg.embedded_vocab_size,
                   search_dirs=[project_root() / SHIPPED_MODELS])
    memo = _recipe_memo(recipe, options)
    noted = memo.read_text() if memo is not None and memo.is_file() else None
    if noted and (Path(noted) / "premem_embedded.json").is_file():
        return noted
    try:
        texts = _pretraining_texts(*recipe)
    except PremError as e:
        if own is None:
            raise
        raise PremError(f"embedded_pretrain_task_options: {e}") from None
    folder = str(embedded.build_embedded_base(list(texts), progress=progress, **options))
    if memo is not None:
        with contextlib.suppress(OSError):  # a read-only cache: the next process draws them again
            io.write_text(memo, folder)
    return folder


def _recipe_memo(recipe: tuple, options: dict) -> Path | None:
    """Where the folder an embedded recipe made is noted, beside the cache: a process that finds it
    draws no texts. Only for tasks whose examples premem's code makes from the options alone; the
    key holds that code, embedded.py's and premem's version, so a change of any misses it."""
    task = tasks.TASKS.get(recipe[0])
    if task is None or not task.premem_made:
        return None
    code = [Path(tasks.__file__).parent.glob("*.py"), [Path(embedded.__file__)]]
    source = hashlib.sha256(b"".join(f.read_bytes() for group in code for f in sorted(group))).hexdigest()
    named = [recipe, options, source, premem.__version__]  # the version is in the folder's own hash too
    key = hashlib.sha256(json.dumps(named, default=str).encode()).hexdigest()[:16]
    return options["cache_dir"] / "recipes" / key
