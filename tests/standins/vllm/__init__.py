"""A stand-in for vllm (which cannot be installed on premem's CPU machines): the parts premem calls,
`LLM`, `SamplingParams`, `inputs.TokensPrompt`, `lora.request.LoRARequest`, with their signatures.
It records every engine built and every call, and answers with shaped outputs: prompt logprobs
computed by the transformers model at the engine's path (so perplexity through it can be checked
against premem's transformers path), and seeded made-up completions for sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

ENGINES: list = []  # every LLM built, in order
TEARDOWNS: list = []  # vllm.distributed teardown calls, in order


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    stop: list | None = None
    include_stop_str_in_output: bool = False
    seed: int | None = None
    prompt_logprobs: int | None = None


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    text: str


@dataclass
class RequestOutput:
    outputs: list
    prompt_logprobs: list | None = None


@dataclass
class LLM:
    model: str
    seed: int = 0
    enable_prefix_caching: bool = True
    enable_lora: bool = False
    max_lora_rank: int = 16
    calls: list = field(default_factory=list)

    def __post_init__(self):
        ENGINES.append(self)
        self._hf = {}

    def _model(self, lora_request):
        import torch
        from transformers import AutoModelForCausalLM

        key = lora_request.lora_path if lora_request else None
        if key not in self._hf:
            m = AutoModelForCausalLM.from_pretrained(self.model, dtype=torch.float32)
            if lora_request:
                from peft import PeftModel

                m = PeftModel.from_pretrained(m, lora_request.lora_path)
            self._hf[key] = m.eval()
        return self._hf[key]

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        import random

        import torch

        if lora_request is not None and not self.enable_lora:
            raise ValueError("LoRA is not enabled for this engine")
        self.calls.append(dict(prompts=list(prompts), params=sampling_params, lora=lora_request))
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        out = []
        for prompt, p in zip(prompts, params):
            if p.prompt_logprobs is not None:
                ids = prompt["prompt_token_ids"]
                with torch.no_grad():
                    logits = self._model(lora_request)(torch.tensor([ids])).logits[0].float()
                logp = torch.log_softmax(logits, -1)
                lps = [None] + [{ids[t]: Logprob(float(logp[t - 1, ids[t]]))} for t in range(1, len(ids))]
                out.append(RequestOutput([CompletionOutput("")], lps))
            else:
                rng = random.Random(p.seed)
                out.append(RequestOutput([CompletionOutput(f" #### {rng.randint(0, 9)}") for _ in range(p.n)]))
        return out
