"""A lean decoding step for Llama-architecture models on a CPU, used by `sampling` when it applies.

Sampling is most of the CPU default's cost, and for a ~1M-parameter model transformers' forward
spends it badly: every decode step reads the whole static KV cache (prompt + max_new_tokens slots,
filled or not), once per sampled copy of a prompt, through 1024 tiny batched GEMVs per layer.
`LlamaDecoder` does the same arithmetic with
- the prompt's keys and values stored once per prompt, not once per copy: the k copies' queries
  attend to them as one small matrix product (k queries x prompt keys);
- the generated tokens' keys and values in their own cache, read only up to the current step;
- fused q/k/v and gate/up projections.
It reads its weights from the transformers model (nothing is copied into a second model format),
and runs transformers' own prefill and rotary embedding, so positions and rope scaling are the
model's. It matches transformers' logits to float rounding (tested); samples can differ where a
rounding flips a near-tie, as between any two BLAS builds (none did: 512 of 512 samples equal on
each base). Measured on one core, 128 test prompts x 4: sampling 1.09x faster than the model's own
forward on the char-level base, 1.15x on the BPE base (1.2x on 64 prompts; AMD EPYC, session 9).
`scripts/benchmark_decoder.py` (a finetuned checkpoint of the CPU default's sweep, 128 test prompts
x 4, one thread; Intel Xeon with AVX-512, 2026-12-01): 3.73 s against 5.09 s, 1.36x, 512 of 512
samples equal. Sampling is most of the sweep's and the curation's time, so it stays. Attention stays
bound by how slowly batched tiny matrix products read memory; shorter sequences (the BPE base, ~3x)
were the larger win.

Rows are `groups x copies` (a prompt's copies consecutive); finished copies keep their slot until
their whole prompt group is done (`removable`), then `keep` drops whole groups.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

__all__ = ["LlamaDecoder", "supports"]


def supports(model) -> bool:
    """Whether `model` is a plain transformers Llama on a CPU: no biases, SiLU, no LoRA wrapper."""
    cfg = getattr(model, "config", None)
    return (type(model).__name__ == "LlamaForCausalLM" and getattr(cfg, "model_type", None) == "llama"
            and not cfg.attention_bias and not cfg.mlp_bias and cfg.hidden_act == "silu"
            and getattr(cfg, "pretraining_tp", 1) == 1 and next(model.parameters()).device.type == "cpu")


def _rms_norm(x, weight, eps):
    # As LlamaRMSNorm: statistics in float32, the weight applied in the input's dtype.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class LlamaDecoder:
    def __init__(self, model, ids, mask, *, copies: int, max_new_tokens: int, cache_keyword: str):
        cfg, inner = model.config, model.model
        self.copies, self.eps = copies, cfg.rms_norm_eps
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.embed, self.norm, self.rotary = inner.embed_tokens.weight, inner.norm.weight, inner.rotary_emb
        self.lm_head = model.lm_head.weight.t()
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(dict(
                ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight,
                qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t().contiguous(),
                o=a.o_proj.weight.t(), gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]).t().contiguous(),
                down=m.down_proj.weight.t()))
        # Prefill by transformers itself: the prompt's keys and values (after rotary), once per prompt.
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=cfg)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True,
                       logits_to_keep=1, **{cache_keyword: cache}).logits[:, -1, :]
        self.first_logits = logits.repeat_interleave(copies, dim=0)
        self.prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]  # groups x kv_heads x L x d
        dtype = self.embed.dtype
        self.prompt_mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(mask == 0, torch.finfo(dtype).min)
        self.prompt_mask = self.prompt_mask[:, None, None, :]  # groups x 1 x 1 x L
        n = ids.shape[0] * copies
        self.next_position = position[:, -1].repeat_interleave(copies) + 1
        self.gen_kv = [(torch.empty(n, self.kv_heads, max_new_tokens, self.head_dim, dtype=dtype),
                        torch.empty(n, self.kv_heads, max_new_tokens, self.head_dim, dtype=dtype))
                       for _ in self.layers]
        self.t = 0  # generated tokens already in gen_kv

    def removable(self, finished: torch.Tensor) -> torch.Tensor:
        """Rows that `keep` may drop: those whose prompt group has finished every copy."""
        return finished.view(-1, self.copies).all(-1).repeat_interleave(self.copies)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep these current rows (whole groups, as `removable` gives them), in this order."""
        groups = rows.view(-1, self.copies)[:, 0] // self.copies  # current group of each kept group
        self.prompt_kv = [(k[groups], v[groups]) for k, v in self.prompt_kv]
        self.prompt_mask = self.prompt_mask[groups]
        self.next_position = self.next_position[rows]
        t = self.t
        self.gen_kv = [(_take(k, rows, t), _take(v, rows, t)) for k, v in self.gen_kv]

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits after feeding one token per row (rows x vocab)."""
        t, n = self.t, token.shape[0]
        x = self.embed[token]
        cos, sin = self.rotary(x, self.next_position[:, None])  # rows x 1 x d
        groups, c, kvh, d = n // self.copies, self.copies, self.kv_heads, self.head_dim
        r = self.heads // kvh  # query heads per kv head
        for w, (pk, pv), (gk, gv) in zip(self.layers, self.prompt_kv, self.gen_kv):
            h = _rms_norm(x, w["ln1"], self.eps) @ w["qkv"]
            q = h[:, :self.heads * d].view(n, self.heads, d)
            k = h[:, self.heads * d:(self.heads + kvh) * d].view(n, kvh, d)
            v = h[:, (self.heads + kvh) * d:].view(n, kvh, d)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            gk[:, :, t], gv[:, :, t] = k, v
            # Prompt part: a group's copies x query heads against its prompt keys, one product per kv head.
            qg = q.view(groups, c, kvh, r, d).transpose(1, 2).reshape(groups, kvh, c * r, d)
            sp = (qg @ pk.transpose(-1, -2)).mul_(self.scaling).add_(self.prompt_mask)
            sp = sp.view(groups, kvh, c, r, -1).transpose(1, 2).reshape(n, kvh, r, -1)
            sg = (q.view(n, kvh, r, d) @ gk[:, :, :t + 1].transpose(-1, -2)).mul_(self.scaling)
            p = torch.softmax(torch.cat([sp, sg], -1), dim=-1, dtype=torch.float32).to(x.dtype)
            lp = sp.shape[-1]
            pp = p[..., :lp].reshape(groups, c, kvh, r, lp).transpose(1, 2).reshape(groups, kvh, c * r, lp)
            o = (pp @ pv).view(groups, kvh, c, r, d).transpose(1, 2).reshape(n, kvh, r, d)
            o = o + p[..., lp:] @ gv[:, :, :t + 1]
            x = x + o.reshape(n, self.heads * d) @ w["o"]
            gu = _rms_norm(x, w["ln2"], self.eps) @ w["gate_up"]
            gate, up = gu.chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ w["down"]
        self.t += 1
        self.next_position = self.next_position + 1
        return _rms_norm(x, self.norm, self.eps) @ self.lm_head


def _rotate(x, cos, sin):
    # apply_rotary_pos_emb for one position per row: x is rows x heads x d, cos/sin rows x 1 x d.
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def _take(cache, rows, t):
    # Copy only the filled steps of the kept rows (a full copy each compaction costs more than it saves).
    out = torch.empty((len(rows),) + cache.shape[1:], dtype=cache.dtype)
    out[:, :, :t] = cache[rows, :, :t]
    return out
