"""One precision rule for training, evaluation and generation.

bf16 halves the work of every matmul on hardware that has native BF16 instructions (AVX-512 BF16 or AMX on CPU,
Ampere and later on CUDA) and only costs time where it has to be emulated. So `auto` picks bf16 only where the
hardware has it; asking for bf16 explicitly where it does not is an error, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmtailor.errors import TailorError

Precision = Literal["auto", "fp32", "bf16"]

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a stage runs in, and why (printed and recorded in run.json)."""

    name: Literal["fp32", "bf16"]
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def dtype(self) -> Any:
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.name, "precision_reason": self.reason}


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Native BF16 instruction-set flags this CPU reports (empty where none, or where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return [f for f in _CPU_BF16_FLAGS if f in flags]
    return []


def cuda_bf16() -> bool:
    """Whether the current CUDA device computes in bf16 natively."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def choose_precision(requested: Precision, device: str, *, setting: str = "precision") -> PrecisionChoice:
    """Resolve `auto | fp32 | bf16` for a device ('cpu' or 'cuda'); `setting` names the key in errors."""
    if requested == "fp32":
        return PrecisionChoice("fp32", f"{setting}: fp32 asked for")
    if device == "cuda":
        if cuda_bf16():
            return PrecisionChoice("bf16", f"{setting}: {requested}; the CUDA device supports bf16")
        if requested == "bf16":
            raise TailorError(f"{setting}: bf16 asked for, but this CUDA device has no bf16 support; "
                              "use precision: fp32 (or auto)")
        return PrecisionChoice("fp32", f"{setting}: auto; the CUDA device has no bf16 support")
    flags = cpu_bf16_flags()
    if flags:
        return PrecisionChoice("bf16", f"{setting}: {requested}; the CPU has native BF16 instructions "
                                       f"({', '.join(flags)})")
    if requested == "bf16":
        raise TailorError(f"{setting}: bf16 asked for, but this CPU has no native BF16 instructions (AVX-512 BF16 "
                          "or AMX); bf16 would be emulated and slower than fp32. Use precision: fp32 or auto")
    return PrecisionChoice("fp32", f"{setting}: auto; the CPU has no native BF16 instructions (AVX-512 BF16 or AMX)")
