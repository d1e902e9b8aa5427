"""Keep glibc from holding freed activation memory between and within training steps.

glibc serves large allocations with mmap and returns them on free, but after the first such free it raises its
threshold (up to 32 MB), so a training step's multi-megabyte activations then come from the heap, where freed
chunks fragment and stay resident. Measured on a LoRA step of SmolLM2-135M (batch 8): the peak RSS per step is
about 1 GB lower with a fixed 128 KiB threshold, and the step is no slower (page faults are small next to the
matmuls). A MALLOC_MMAP_THRESHOLD_ set by the user wins; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
THRESHOLD = 128 * 1024


def return_large_frees_to_os(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; True when it was set."""
    if platform.system() != "Linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
