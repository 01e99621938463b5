"""premem.training: completion-only labels, per-epoch checkpoints, resume, LoRA, baseline predictors."""
import pytest
import torch
from safetensors.torch import load_file

from premem import baselines, checkpoints, embedded, encoding, model as pm
from premem import training as tr
from premem.errors import PremError

PROMPTS = [f"{a} + {b} =\nAnswer:" for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 2), (9, 3),
                                                 (4, 4), (8, 1), (6, 3), (1, 1), (3, 3), (5, 2)]]
TARGETS = [f" {eval(p.split(chr(10))[0][:-2])}\nDone." for p in PROMPTS]
N, BS = len(PROMPTS), 4  # 3 optimiser steps per epoch
FAST = dict(lr=1e-2, batch_size=BS, seed=0, warmup_ratio=0.0, progress=False)


def tiny():
    tok = embedded.char_tokenizer()
    return embedded._tiny_llama(len(tok), tok, 32, 2, 2, 32, seed=0), tok


def mean_loss(model, tok):
    batch = encoding.CompletionCollator(tok.pad_token_id)(encoding.build_features(tok, PROMPTS, TARGETS))
    with torch.no_grad():
        return model(**batch).loss.item()


def test_label_mask_by_hand():
    tok = embedded.char_tokenizer()
    assert tok.bos_token_id is not None
    prompt, target = "1 + 2 =\nAnswer:", " 3\nDone."
    ids, n_prompt = encoding.encode_example(tok, prompt, target)
    assert n_prompt == 1 + len(prompt)  # BOS + one token per character, measured not assumed
    assert ids == tok(prompt + target)["input_ids"] + [tok.eos_token_id]
    (feat,) = encoding.build_features(tok, [prompt], [target])
    assert feat["labels"][:n_prompt] == [-100] * n_prompt
    assert feat["labels"][n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == target
    assert feat["labels"][-1] == tok.eos_token_id
    batch = encoding.CompletionCollator(tok.pad_token_id)([feat, {"input_ids": [5, 6], "labels": [-100, 6]}])
    assert batch["labels"][1].tolist() == [-100, 6] + [-100] * (len(ids) - 2)
    assert batch["attention_mask"][1].sum() == 2 and batch["input_ids"][1, 2] == tok.pad_token_id


def test_checkpoint_per_epoch_and_loss_decreases(tmp_path):
    model, tok = tiny()
    before = mean_loss(model, tok)
    seen = []
    ckpts = tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path, epochs=3,
                        on_checkpoint=lambda step, epoch, m: seen.append((step, epoch, m.training)), **FAST)
    assert [(c["step"], c["epoch"]) for c in ckpts] == [(3, 1), (6, 2), (9, 3)]
    assert seen == [(3, 1, False), (6, 2, False), (9, 3, False)]
    for c in ckpts:
        assert c["path"] == tmp_path / f"checkpoint-{c['step']}"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in c["path"].iterdir()}
    # keep_optimizer="last": only the newest checkpoint keeps resume-only state.
    assert [(c["path"] / "optimizer.pt").exists() for c in ckpts] == [False, False, True]
    assert ckpts[-1]["loss"] < ckpts[0]["loss"]
    assert mean_loss(model, tok) < 0.8 * before
    again, tok2 = tr.load_checkpoint(ckpts[-1]["path"])
    assert mean_loss(again, tok2) == pytest.approx(mean_loss(model, tok), rel=1e-5)


def test_save_every_epochs(tmp_path):
    model, tok = tiny()
    ckpts = tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path, epochs=3, save_every_epochs=2, **FAST)
    assert [c["epoch"] for c in ckpts] == [2, 3]  # every 2nd epoch, and always the last


def test_resume_does_not_redo_finished_epochs(tmp_path):
    ref_model, tok = tiny()
    ref = tr.finetune(ref_model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "ref", epochs=3, **FAST)

    # A run interrupted while recording epoch 2: that checkpoint is unfinished and gets redone.
    def crash_at_2(step, epoch, m):
        if epoch == 2:
            raise KeyboardInterrupt

    model, _ = tiny()
    with pytest.raises(KeyboardInterrupt):
        tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "run", epochs=3,
                    on_checkpoint=crash_at_2, **FAST)
    assert [c["epoch"] for c in checkpoints.finished_checkpoints(tmp_path / "run")] == [1]
    first = tmp_path / "run" / "checkpoint-3" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    seen = []
    model, _ = tiny()
    ckpts = tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "run", epochs=3,
                        on_checkpoint=lambda s, e, m: seen.append(e), **FAST)
    assert seen == [2, 3] and [c["step"] for c in ckpts] == [3, 6, 9]
    assert first.stat().st_mtime_ns == stamp
    # Resumed training reproduces the uninterrupted run (RNG and optimiser state restored).
    a = load_file(ref[-1]["path"] / "model.safetensors")
    b = load_file(ckpts[-1]["path"] / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # Asking for more epochs continues from the last checkpoint; asking again trains nothing.
    seen.clear()
    ckpts = tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "run", epochs=4,
                        on_checkpoint=lambda s, e, m: seen.append(e), **FAST)
    assert seen == [4] and [c["epoch"] for c in ckpts] == [1, 2, 3, 4]
    ckpts = tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "run", epochs=4,
                        on_checkpoint=lambda s, e, m: seen.append(e), **FAST)
    assert seen == [4] and len(ckpts) == 4
    with pytest.raises(PremError, match="resume=False"):
        tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "run", epochs=4, resume=False, **FAST)


def test_lora_trains_only_adapter(tmp_path):
    model, tok = tiny()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    model, tok = pm.load_base(str(tmp_path / "base"))  # the adapter records this folder as its base
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    ckpts = tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "run", epochs=2,
                        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, **FAST)
    assert (ckpts[-1]["path"] / "adapter_config.json").is_file()
    peft_model, _ = tr.load_checkpoint(ckpts[-1]["path"])
    trained = {n: p for n, p in peft_model.named_parameters()}
    lora_names = [n for n in trained if "lora_" in n]
    assert lora_names and all(not p.requires_grad for n, p in trained.items() if "lora_" not in n)
    for name, p0 in base.items():  # base weights untouched
        wrapped = "base_model.model." + name.replace("q_proj.", "q_proj.base_layer.").replace(
            "v_proj.", "v_proj.base_layer.")
        assert torch.equal(trained[wrapped].detach(), p0), name
    assert any(trained[n].abs().sum() > 0 for n in lora_names if "lora_B" in n)  # B starts at zero
    with pytest.raises(PremError, match="rank"):
        tr.finetune(tiny()[0], tok, PROMPTS, TARGETS, output_dir=tmp_path / "bad", epochs=1,
                    lora={"rank": 4}, **FAST)


def test_param_distance_and_gradient_variance(tmp_path):
    model, tok = tiny()
    theta0 = baselines.snapshot(model)
    assert baselines.param_distance(model, theta0) == 0.0
    gv = baselines.gradient_variance(model, tok, PROMPTS, TARGETS, batch_size=4, n_batches=3, seed=0)
    assert gv > 0 and gv == baselines.gradient_variance(model, tok, PROMPTS, TARGETS, 4, 3, seed=0)
    assert all(p.grad is None for p in model.parameters()) and model.training is True  # mode restored
    full = baselines.gradient_variance(model, tok, PROMPTS, TARGETS, batch_size=N, n_batches=3, seed=0)
    assert full == pytest.approx(0.0, abs=1e-12)  # every "minibatch" is the whole set
    tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path, epochs=1, **FAST)
    assert baselines.param_distance(model, theta0) > 0
    with pytest.raises(PremError, match="nope"):
        baselines.param_distance(model, {"nope": torch.zeros(1)})


def test_record_sees_the_model_without_the_trainer_autocast():
    """On a GPU the Trainer's accelerate wraps model.forward in bf16 autocast; the recorder must run
    the float32 model as it is (a float32 KV cache met bf16 keys there). Same wrapper, on the CPU."""
    from accelerate import Accelerator

    from premem.sampling import sample

    from accelerate.state import AcceleratorState

    model, tok = tiny()
    AcceleratorState._reset_state(reset_partial_state=True)  # earlier Trainers set fp32 process-wide
    try:
        model = Accelerator(mixed_precision="bf16", cpu=True).prepare(model)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert "forward" in vars(model)  # accelerate's wrapper
    with torch.no_grad():
        ids = tok(["1 + 2 =\nAnswer:"], return_tensors="pt")["input_ids"]
        wrapped = model.forward
        with tr._plain_forward(model):
            assert model.forward == model._original_forward
            assert model(ids).logits.dtype == torch.float32
            assert len(sample(model, tok, ["1 + 2 =\nAnswer:"], k=2, max_new_tokens=4, progress=False)[0]) == 2
        assert model.forward is wrapped  # restored for training


def test_the_authors_target_format_and_truncation():
    """target_eos: false ends a target at its text (the authors' "\\nDone."); model_max_length cuts
    examples, labels with them, where the model's own context is an error."""
    tok = embedded.char_tokenizer()
    prompt, target = "1 + 2 =\nAnswer:", " 3\nDone."
    (with_eos,) = encoding.build_features(tok, [prompt], [target])
    (without,) = encoding.build_features(tok, [prompt], [target], add_eos=False)
    assert without["input_ids"] == with_eos["input_ids"][:-1] and without["labels"][-1] == tok.convert_tokens_to_ids(".")
    (cut,) = encoding.build_features(tok, [prompt], [target], max_length=20, truncate=True)
    assert len(cut["input_ids"]) == len(cut["labels"]) == 20 and cut["labels"] == with_eos["labels"][:20]
    with pytest.raises(PremError, match="more than the model's 20"):
        encoding.build_features(tok, [prompt], [target], max_length=20)


def test_gradient_accumulation_makes_the_batch(tmp_path, monkeypatch):
    """batch_size is the optimiser's batch: per-device batches x accumulation x processes, so the
    checkpoints fall at the same steps; a batch that does not divide is refused before training."""
    model, tok = tiny()
    ckpts = tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "acc", epochs=1, warmup_steps=2,
                        per_device_batch_size=2, **FAST)
    args = torch.load(ckpts[-1]["path"] / "training_args.bin", weights_only=False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.warmup_steps) == (2, 2, 2)
    assert ckpts[-1]["step"] == N // BS
    with pytest.raises(PremError, match="no multiple of per_device_batch_size 3"):
        tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "bad", epochs=1, per_device_batch_size=3,
                    **FAST)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(PremError, match="x 3 processes"):
        tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "bad", epochs=1, **FAST)
    monkeypatch.setenv("WORLD_SIZE", "1")
    if not torch.cuda.is_available():  # on a GPU machine fp16 autocast is allowed
        with pytest.raises(PremError, match="mixed_precision: fp16 autocasts on a GPU"):
            tr.finetune(model, tok, PROMPTS, TARGETS, output_dir=tmp_path / "fp16", epochs=1, mixed_precision="fp16",
                        **FAST)


def test_weight_files_find_every_way_a_checkpoint_is_saved(tmp_path):
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
             "pytorch_model_fsdp.bin", "adapter_model.safetensors", "config.json", "optimizer.pt", "tokenizer.json"]
    for n in names:
        (tmp_path / n).write_text("x")
    assert [f.name for f in checkpoints.weight_files(tmp_path)] == sorted(names[:5])


def test_an_added_pad_token_resizes_the_embeddings_to_their_mean():
    model, tok = tiny()
    tok.pad_token = None
    before = model.get_input_embeddings().weight.detach().clone()
    pm.prepare_tokenizer(tok, model, pad_token="add")
    weight = model.get_input_embeddings().weight.detach()
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == len(before) == weight.shape[0] - 1
    assert torch.equal(weight[:-1], before)
    torch.testing.assert_close(weight[-1], before.mean(0), atol=1e-2, rtol=0)  # mean_resizing samples near the mean
    model2, tok2 = tiny()
    tok2.pad_token = None
    pm.prepare_tokenizer(tok2, model2)  # the default reuses eos: no new token
    assert tok2.pad_token == tok2.eos_token and model2.get_input_embeddings().weight.shape[0] == len(before)
