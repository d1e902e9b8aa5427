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
    import torch

    lengths = mask.sum(dim=1, keepdim=True)
    return bool(torch.equal(mask.bool(), torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths))


def label_logits(model: Any, inputs: dict[str, Any], *, autocast_bf16: bool = False) -> tuple[Any, Any]:
    """(fp32 logits at the label positions, their targets): the backbone runs on every token, the head on labels."""
    import torch
    import torch.nn.functional as F

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
    picked = hidden[:, :-1][mask]  # (n_label_tokens, hidden): the only rows the head sees
    # The head runs in fp32 even under bf16: bf16 logits (8-bit mantissa) shift log-softmax by a few percent, and
    # with only label rows left the fp32 projection is a small share of the step.
    weight = _fp32_weight(head.weight)
    bias = None if getattr(head, "bias", None) is None else head.bias.float()
    return F.linear(picked.float(), weight, bias), shift[mask]


_FP32_HEAD: dict[int, tuple[int, int, Any]] = {}


def _fp32_weight(weight: Any) -> Any:
    """The head weight in fp32. A frozen bf16 head (LoRA over a bf16 base) is converted once and reused: the
    conversion of a 49k x 576 matrix took ~4% of a demo step when redone every step."""
    import torch

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
    import torch
    import torch.nn.functional as F

    logits, targets = label_logits(model, inputs, autocast_bf16=autocast_bf16)
    total = F.cross_entropy(logits, targets, reduction="sum")
    n = targets.numel()
    denom = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else n, device=total.device)
    loss = total / denom.clamp(min=1)
    with torch.no_grad():
        correct = int((logits.argmax(-1) == targets).sum()) if n else 0
    return LabelLoss(loss, n, correct)
