"""Causal-LM loss that only projects the positions the loss is taken on.

With assistant-only loss, most positions of a chat row (system prompt, user turn, padding) carry label -100.
Building `batch x seq x vocab` logits for them is most of the LM head's cost (49k-entry vocabulary on SmolLM2)
and of the step's memory. Here the backbone's hidden states are gathered at the label positions first, and only
those rows go through the LM head and the cross-entropy. The loss is the same sum / token-count reduction TRL uses,
so gradients match TRL's to float rounding (tested against TRL's own loss on the same batch).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100


@dataclass
class LabelLoss:
    """Loss of one micro-batch plus the counts the trainer logs (no full-vocabulary tensor is kept)."""

    loss: Any
    label_tokens: int
    correct: int


def base_model_of(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (the model itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder backbone, LM head) of a causal LM, under a PEFT wrapper too (adapter layers stay injected in it);
    None for a model without that shape. Distributed wrappers never reach here: the trainer hands those to TRL."""
    inner = base_model_of(model)
    backbone = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return (backbone, head) if backbone is not None and head is not None else None


def _right_padded(mask: Any) -> bool:
    """Every row is ones then zeros: padding only after the real tokens."""
    lengths = mask.sum(dim=1, keepdim=True)
    return bool(torch.equal(mask.bool(), torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths))


def label_hidden(model: Any, inputs: dict[str, Any], *, autocast_bf16: bool = False) -> tuple[Any, Any, Any]:
    """(backbone hidden states at the label positions, their targets, the LM head): the backbone runs on every
    token, nothing of vocabulary width is built yet."""
    parts = backbone_and_head(model)
    if parts is None:
        raise TypeError(f"{type(model).__name__}: no decoder backbone and LM head to compute a label-only loss")
    backbone, head = parts
    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask", "assistant_masks")}
    kwargs["use_cache"] = False
    mask = kwargs.get("attention_mask")
    if mask is not None and "position_ids" not in kwargs and _right_padded(mask):
        # Causal attention never looks ahead, so right padding cannot reach a real token: without the mask the
        # real positions compute exactly the same, and sdpa can take its fused causal kernel instead of
        # materialising a batch x heads x seq x seq mask and weights. Pad positions carry no label.
        del kwargs["attention_mask"]
    device_type = labels.device.type
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    with ctx:
        hidden = backbone(**kwargs).last_hidden_state
    shift = labels[:, 1:].to(hidden.device)
    mask = shift != IGNORE
    return hidden[:, :-1][mask], shift[mask], head  # (n_label_tokens, hidden): the only rows the head sees


def label_logits(model: Any, inputs: dict[str, Any], *, autocast_bf16: bool = False) -> tuple[Any, Any]:
    """(fp32 logits at the label positions, their targets), for losses that need the logits themselves (KD)."""
    import torch.nn.functional as F

    picked, targets, head = label_hidden(model, inputs, autocast_bf16=autocast_bf16)
    # The head runs in fp32 even under bf16: bf16 logits (8-bit mantissa) shift log-softmax by a few percent, and
    # with only label rows left the fp32 projection is a small share of the step.
    weight = _fp32_weight(head.weight)
    bias = None if getattr(head, "bias", None) is None else head.bias.float()
    return F.linear(picked.float(), weight, bias), targets


# Label rows per chunk of the fused head + cross-entropy: 64 x 49k fp32 logits is 12.6 MB, small enough to be
# reused from the heap step after step (see cpu_memory.py) instead of mapped and faulted in afresh.
HEAD_CHUNK = 64


class _HeadCrossEntropy(torch.autograd.Function):
    """(sum of -log softmax(h W^T + b)[target], count of argmax hits) over label rows, chunk by chunk.

    The cross-entropy's gradient with respect to the logits is softmax - onehot, known as soon as a chunk's logits
    are: the forward turns each chunk's logits into it in place and multiplies it back through W at once (Liger's
    fused linear cross-entropy, done on CPU). No `rows x vocabulary` tensor outlives its chunk, and the separate
    log-softmax, its backward and the zero-filled logits gradient of the unfused path are not needed. The backward
    only scales the gradients the forward kept (rows x hidden, plus W's and b's when they train)."""

    @staticmethod
    def forward(ctx: Any, h: Any, w: Any, b: Any, targets: Any, chunk: int) -> tuple[Any, Any]:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        total = h.new_zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.long)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_b = torch.zeros_like(b) if need_b else None
        for start in range(0, h.shape[0], chunk):
            rows, tgt = h[start:start + chunk], targets[start:start + chunk]
            logits = rows @ w.t() if b is None else torch.addmm(b, rows, w.t())
            correct += (logits.argmax(-1) == tgt).sum().cpu()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(len(tgt), device=grad.device), tgt] -= 1.0
            if grad_h is not None:
                torch.mm(grad, w, out=grad_h[start:start + chunk])
            if grad_w is not None:
                grad_w.addmm_(grad.t(), rows)
            if grad_b is not None:
                grad_b.add_(grad.sum(0))
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: Any, _grad_correct: Any) -> tuple[Any, ...]:
        grads = tuple(None if g is None else g * grad_total for g in ctx.grads)
        ctx.grads = None  # free them with the step, whatever holds on to the graph
        return (*grads, None, None)


_FP32_HEAD: dict[int, tuple[int, int, Any]] = {}


def _fp32_weight(weight: Any) -> Any:
    """The head weight in fp32. A frozen bf16 head (LoRA over a bf16 base) is converted once and reused: the
    conversion of a 49k x 576 matrix took ~4% of a demo step when redone every step."""
    if weight.dtype == torch.float32:
        return weight
    if weight.requires_grad:
        return weight.float()
    key = id(weight)
    hit = _FP32_HEAD.get(key)
    if hit is not None and hit[0] == weight._version and hit[1] == weight.data_ptr():
        return hit[2]
    _FP32_HEAD.clear()  # one head at a time: a new model replaces the old copy instead of piling up
    copy = weight.detach().float()
    _FP32_HEAD[key] = (weight._version, weight.data_ptr(), copy)
    return copy


def label_only_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None, *,
                    autocast_bf16: bool = False) -> LabelLoss:
    """Next-token cross-entropy over label positions only: sum of -log p / (num_items_in_batch or label count)."""

    picked, targets, head = label_hidden(model, inputs, autocast_bf16=autocast_bf16)
    # The head runs in fp32 even under bf16: bf16 logits (8-bit mantissa) shift log-softmax by a few percent.
    weight = _fp32_weight(head.weight)
    bias = None if getattr(head, "bias", None) is None else head.bias.float()
    total, correct = _HeadCrossEntropy.apply(picked.float(), weight, bias, targets, HEAD_CHUNK)
    correct = int(correct)
    n = targets.numel()
    denom = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else n, device=total.device)
    loss = total / denom.clamp(min=1)
    return LabelLoss(loss, n, correct)
