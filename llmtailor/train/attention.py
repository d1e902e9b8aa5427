"""Causal attention for bf16 training on CPU: matmul kernels, memory of a fused kernel.

On a CPU with native BF16, oneDNN's bf16 GEMMs beat the inner loops of PyTorch's fused CPU attention kernel (sdpa's
flash path), so the same work as three bf16 matmuls and a softmax (transformers' eager attention) runs faster.
Eager attention, though, keeps every layer's `batch x heads x seq x seq` probabilities for the backward pass. This
function does eager's matmuls but keeps only q, k, v and the output, like the fused kernel, and recomputes the
probabilities in the backward pass (one extra matmul). bench/attention_cpu.py measures all three per layer.

Grouped-query attention is handled without repeating k and v: the query heads of a group are stacked along the
sequence axis and share their key/value head. The mask is transformers' sdpa mask (None when plain causal, else a
boolean mask, e.g. block-diagonal for packed rows), so padding and packing behave as with sdpa. A padding-free row
(several examples laid end to end, their boundaries in the collator's `cu_seq_lens`, as flash attention's varlen
kernels take them) is attended example by example, so it costs what its examples cost, never the whole row squared.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "llmtailor_cpu"
# Large but finite: a row with nothing to attend to (padding) gets uniform weights instead of NaN, as with sdpa.
NEG = -1e30


def _probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """fp32 softmax(q k^T + bias) for a pre-scaled q; the scores stay in q's dtype, as in transformers' eager path."""
    scores = torch.matmul(q, k.transpose(-1, -2)).add_(bias)
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


class _Attention(torch.autograd.Function):
    """o = softmax(q k^T + bias) v over [B, KV, G*S, D] pre-scaled queries and [B, KV, S, D] keys/values.

    The backward pass recomputes the probabilities and takes softmax's row term from o (sum_j p_ij dp_ij equals
    grad_o_i . o_i, as flash attention does), so nothing of size seq x seq is kept between the passes."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(_probs(q, k, bias).to(q.dtype), v)
        ctx.save_for_backward(q, k, v, bias, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, bias, out = ctx.saved_tensors
        probs = _probs(q, k, bias)
        low = probs.to(q.dtype)
        grad_out = grad_out.to(q.dtype)
        grad_v = torch.matmul(low.transpose(-1, -2), grad_out)
        row = (grad_out.float() * out.float()).sum(dim=-1, keepdim=True)
        grad_p = torch.matmul(grad_out, v.transpose(-1, -2))
        grad_s = probs.mul_(grad_p.float().sub_(row)).to(q.dtype)
        grad_q = torch.matmul(grad_s, k)
        grad_k = torch.matmul(grad_s.transpose(-1, -2), q)
        return grad_q, grad_k, grad_v, None


def _bias(mask: torch.Tensor | None, groups: int, q_len: int, kv_len: int, device: Any,
          dtype: torch.dtype) -> torch.Tensor:
    """Additive bias broadcastable to [B, KV, G*S, S]: 0 where attention is allowed, NEG elsewhere."""
    if mask is None:
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)[None, None]
    elif mask.dtype == torch.bool:
        allowed = mask  # [B or 1, 1 or H, S, S]
    else:
        bias = mask.to(dtype).clamp(min=NEG)
        return bias.repeat(1, 1, groups, 1) if bias.shape[1] == 1 else _grouped(bias, groups)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, NEG)
    return bias.repeat(1, 1, groups, 1) if bias.shape[1] == 1 else _grouped(bias, groups)


def _grouped(bias: torch.Tensor, groups: int) -> torch.Tensor:
    """A per-head bias [B, H, S, S] laid out as [B, KV, G*S, S]."""
    b, h, s, t = bias.shape
    return bias.reshape(b, h // groups, groups * s, t)


def cpu_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: [B, H, S, D] inputs, [B, S, H, D] output."""
    if dropout and module.training:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    bounds = _segments(kwargs, query, key)
    if bounds is None:
        return _attend(query, key, value, attention_mask, scale, dtype).contiguous(), None
    # Padding-free batch (TRL's padding_free collator, packing): one row holding several examples, their starts in
    # cu_seq_lens. Each example attends within itself, so the cost is the sum of their squared lengths instead of
    # the square of the whole row, and no block-diagonal mask is built or read.
    outs = [_attend(query[:, :, a:z], key[:, :, a:z], value[:, :, a:z], None, scale, dtype)
            for a, z in zip(bounds[:-1], bounds[1:], strict=False) if z > a]
    return torch.cat(outs, dim=1), None


def _segments(kwargs: dict[str, Any], query: torch.Tensor, key: torch.Tensor) -> list[int] | None:
    """Example boundaries of a padding-free row from the collator's cu_seq_lens; None for an ordinary batch."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return None
    bounds = [int(x) for x in cu_q.tolist()]
    if cu_k is not None and [int(x) for x in cu_k.tolist()] != bounds:
        return None
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] > query.shape[2] or bounds != sorted(bounds):
        raise ValueError(f"cu_seq_lens {bounds} do not describe a row of {query.shape[2]} tokens")
    if bounds[-1] < query.shape[2]:  # trailing padding (pad_to_multiple_of): a segment of its own
        bounds.append(query.shape[2])
    return bounds


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
            scale: float, dtype: torch.dtype) -> torch.Tensor:
    """[B, H, S, D] queries and [B, KV, T, D] keys/values to a [B, S, H, D] output."""
    b, h, s, d = query.shape
    kv_heads, t = key.shape[1], key.shape[2]
    groups = h // kv_heads
    # The scale goes on q (a seq x dim tensor) rather than on the seq x seq scores; exact for a power of two
    # (1/8 for heads of 64).
    q = (query * scale).to(dtype).reshape(b, kv_heads, groups * s, d)
    bias = _bias(attention_mask, groups, s, t, query.device, dtype)
    out = _Attention.apply(q, key.to(dtype), value.to(dtype), bias)
    return out.reshape(b, h, s, d).transpose(1, 2)


def use_cpu_attention(model: Any) -> bool:
    """Switch a model on CPU to this attention (training under bf16); False when the model has no such switch."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    from llmtailor.train.loss import base_model_of

    AttentionInterface.register(NAME, cpu_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    inner = base_model_of(model)
    if not hasattr(inner, "set_attn_implementation"):
        return False
    try:
        inner.set_attn_implementation(NAME)
    except (ValueError, ImportError):
        return False
    return True
