"""A lean decoding step for Llama-family models on CPU.

A decoding step of a small model on CPU pays much per-operation overhead besides its arithmetic: Python and
dispatch, module calls with their hooks, the output-capturing and mask-building machinery, keyword plumbing, the
cache object's bookkeeping, RMSNorm and RoPE written as many small operations. Raw `model.generate` pays all of it
too. This module runs the same computation on the model's own weights (shared, not copied) with the fewest
operations: fused RMSNorm (`F.rms_norm`), one RoPE table per step for all layers, grouped-query attention without
repeated keys (as transformers does it), the attention mask built once per step, the cache's tensors appended to
directly.

The serving engine and llmtailor/generate.py use it for decoding steps (one new token per row) of a plain Llama
model: the base (LoRA rows added by lean_lora.py) or a model with an adapter merged in. Prefill, adapters that
lean_lora.py cannot apply and every other architecture keep transformers' and PEFT's forward. `unsupported` says why
a model is not eligible; the callers then simply do not use the lean step.
"""

from __future__ import annotations

from typing import Any


def unsupported(model: Any) -> str | None:
    """None when `LeanDecoder` computes exactly what transformers' forward does for this model, else the reason."""
    import torch

    if type(model).__name__ != "LlamaForCausalLM":
        return f"{type(model).__name__} is not LlamaForCausalLM"
    cfg = model.config
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "biases in attention or MLP"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if next(model.parameters()).device.type != "cpu":
        return "not on CPU (per-op overhead matters less there)"
    for layer in model.model.layers:
        mods = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        if any(type(m) is not torch.nn.Linear for m in mods):
            return "wrapped or quantized linear layers (PEFT, bitsandbytes)"
    if type(model.lm_head) is not torch.nn.Linear or model.lm_head.bias is not None:
        return "LM head is not a plain Linear"
    return None


def supported_cache(cache: Any) -> bool:
    """Only plain DynamicLayer caches (keys and values as [rows, kv heads, columns, head dim] tensors)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x) is DynamicLayer and x.is_initialized for x in layers)


class LeanDecoder:
    """One decoding step of a LlamaForCausalLM on its own weights; `step` returns the logits of the new token."""

    def __init__(self, model: Any):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"lean decoding not supported: {reason}")
        cfg = model.config
        inner = model.model
        self.model = model  # kept so the weights below stay the model's own (a changed weight is seen at once)
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.head = model.lm_head.weight
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        attn = inner.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scale = attn.scaling
        self.layers = [
            (
                (lay.input_layernorm.weight, lay.input_layernorm.variance_epsilon),
                fuse_rows([lay.self_attn.q_proj, lay.self_attn.k_proj, lay.self_attn.v_proj]),
                lay.self_attn.o_proj.weight,
                (lay.post_attention_layernorm.weight, lay.post_attention_layernorm.variance_epsilon),
                fuse_rows([lay.mlp.gate_proj, lay.mlp.up_proj]),
                lay.mlp.down_proj.weight,
            )
            for lay in inner.layers
        ]
        self.q_width, self.kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.inter = cfg.intermediate_size
        hidden = cfg.hidden_size
        self.group_sizes = {"qkv": [self.q_width, self.kv_width, self.kv_width], "o": [hidden],
                            "gu": [self.inter, self.inter], "down": [hidden]}

    def step(self, ids: Any, mask: Any, positions: Any, cache: Any, lora: Any = None) -> Any:
        """Logits [rows, vocab] for `ids` [rows, 1] at `positions` [rows, 1], attending to the cache's columns plus
        the new one under `mask` [rows, columns + 1] (0: padding); the new keys and values are appended to `cache`.
        `lora` (lean_lora.LoraBatch): each row's LoRA adapter, added to every projection it adapts."""
        import torch
        import torch.nn.functional as F

        rows = ids.shape[0]
        x = F.embedding(ids, self.embed)  # [rows, 1, hidden]
        cos, sin = self.rotary(x, positions)  # [rows, 1, head_dim], the model's own RoPE (scaling types included)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        half = self.head_dim // 2
        # Left padding: a boolean mask over the columns, or none at all when no row has padding (one stream).
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads
        gqa = nh != nkv
        qw, kvw, inter = self.q_width, self.kv_width, self.inter
        for i, (n1, wqkv, wo, n2, wgu, wd) in enumerate(self.layers):
            h = _rms(x, n1)
            qkv = F.linear(h, wqkv)
            if lora is not None:
                qkv = lora.add(qkv, h, i, "qkv")
            q = qkv[..., :qw].view(rows, 1, nh, hd).transpose(1, 2)
            k = qkv[..., qw:qw + kvw].view(rows, 1, nkv, hd).transpose(1, 2)
            v = qkv[..., qw + kvw:].view(rows, 1, nkv, hd).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
            layer = cache.layers[i]
            layer.keys = keys = torch.cat([layer.keys, k], dim=-2)
            layer.values = values = torch.cat([layer.values, v], dim=-2)
            if attn_mask is None:
                a = F.scaled_dot_product_attention(q, keys, values, scale=self.scale, enable_gqa=gqa)
            else:  # as transformers does under a mask: each kv head's query heads as a sequence of queries
                a = F.scaled_dot_product_attention(q.reshape(rows, nkv, nh // nkv, hd), keys, values,
                                                   attn_mask=attn_mask, scale=self.scale)
            a = a.reshape(rows, 1, nh * hd)
            o = F.linear(a, wo)
            x = x + (o if lora is None else lora.add(o, a, i, "o"))
            h = _rms(x, n2)
            gu = F.linear(h, wgu)
            if lora is not None:
                gu = lora.add(gu, h, i, "gu")
            m = F.silu(gu[..., :inter]) * gu[..., inter:]
            d = F.linear(m, wd)
            x = x + (d if lora is None else lora.add(d, m, i, "down"))
        return F.linear(_rms(x, self.norm)[:, -1], self.head)


def fuse_rows(linears: list[Any]) -> Any:
    """One weight matrix for several Linears that read the same input (q, k, v; gate, up): one matrix product per
    step instead of several, which on CPU saves each small product's fixed cost. The Linears' weights become row
    slices (views) of the fused matrix, so no memory is added, the model's own forward still works, and an in-place
    change of a weight is seen by both."""
    import torch

    weights = [m.weight for m in linears]
    fused = getattr(linears[0], "_llmtailor_fused", None)
    if fused is not None and _rows_of(fused, weights):
        return fused
    with torch.no_grad():
        fused = torch.cat([w.detach() for w in weights])
        start = 0
        for m, w in zip(linears, weights, strict=True):
            m.weight.data = fused[start:start + w.shape[0]]
            start += w.shape[0]
    linears[0]._llmtailor_fused = fused
    return fused


def _rows_of(fused: Any, weights: list[Any]) -> bool:
    """Are `weights` still consecutive row slices of `fused` (nobody replaced a weight since)?"""
    ptr, rows = fused.data_ptr(), 0
    for w in weights:
        if w.data_ptr() != ptr + rows * fused.stride(0) * fused.element_size() or w.shape[1:] != fused.shape[1:]:
            return False
        rows += w.shape[0]
    return rows == fused.shape[0]


def _rms(x: Any, norm: tuple[Any, float]) -> Any:
    """LlamaRMSNorm: normalized in float32, cast back, then scaled by the weight (the same order of operations)."""
    import torch.nn.functional as F

    weight, eps = norm
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
