"""LoRA under bf16 autocast: bf16 adapter matmuls, fp32 sums wherever a small update would be rounded away.

Under autocast the base layer's output is bf16 (8-bit mantissa). A freshly initialised adapter adds a delta far
below one bf16 step of that output, so PEFT's `result + delta` (cast back to bf16) rounds most of the first
updates away and bf16 training lags fp32 by several percent of loss. So the sum stays fp32: the residual stream
keeps every update, and where an fp32 output is rounded only after further work (rotary on q/k, SiLU x up) the
rounding falls at a different place per element and the update survives on average. Rounding the sum straight
to bf16 (measured on SmolLM2: q/k/gate/up in bf16 lag fp32 by ~5% of loss after 4 steps) does not; only v_proj,
whose output the attention kernel casts to bf16 unchanged, gives the same numbers in bf16 and stays bf16.

The adapter's own matmuls run in bf16 (autocast casts the fp32 master weights once per forward; the optimizer keeps
fp32 weights and gradients): measured, the loss matches the fp32-adapter path to 4 digits. Their input is cast to
bf16 once and shared by q, k and v (and gate and up), and only that bf16 copy is kept for the backward pass, not an
fp32 copy per projection.
"""

from __future__ import annotations

import types
from typing import Any

# Projections whose output goes straight into a kernel that casts it to bf16 unchanged (v into attention):
# the bf16 sum is bit-identical there. Every other projection returns fp32 (see the module docstring).
BF16_OUTPUT = frozenset({"v_proj", "value"})

_casts: Any = None


def _shared_bf16(x: Any, dtype: Any) -> Any:
    """`x` cast to the autocast dtype, reused while the same tensor feeds several projections (q, k, v)."""
    global _casts
    if x.dtype == dtype:
        return x
    if _casts is None:
        from torch.utils.weak import WeakIdKeyDictionary

        _casts = WeakIdKeyDictionary()  # entries die with their source tensor: nothing outlives the layer
    hit = _casts.get(x)
    if hit is not None and hit[0] == x._version:
        return hit[1]
    low = x.to(dtype)
    _casts[x] = (x._version, low)
    return low


def _mixed_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    device = x.device.type
    if (not torch.is_autocast_enabled(device) or self.disable_adapters or self.merged
            or kwargs.get("adapter_names") is not None or any(a in self.lora_variant for a in self.active_adapters)):
        return self._llmtailor_forward(x, *args, **kwargs)
    low = _shared_bf16(x, torch.get_autocast_dtype(device))
    result = self.base_layer(low, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        # The scale multiplies the rank-r intermediate, not the output: the same product (linear maps commute
        # with a scalar) on a tensor out_features/r times smaller.
        delta = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](low)) * self.scaling[name])
        # fp32 sum: one upcast of the base output, then the bf16 delta is added in place (computed in fp32).
        result = result + delta if self._llmtailor_low_out else result.float().add_(delta)
    return result


def keep_adapters_fp32(model: Any) -> int:
    """Patch every plain LoRA linear layer of a PEFT model; returns how many were patched (DoRA is left as is).

    Master weights stay fp32; only the forward under autocast changes (see the module docstring)."""
    from peft.tuners.lora.layer import Linear

    patched = 0
    for qualified, module in model.named_modules():
        if isinstance(module, Linear) and not hasattr(module, "_llmtailor_forward"):
            module._llmtailor_forward = module.forward
            module._llmtailor_low_out = qualified.rsplit(".", 1)[-1] in BF16_OUTPUT
            module.forward = types.MethodType(_mixed_forward, module)
            patched += 1
    return patched
