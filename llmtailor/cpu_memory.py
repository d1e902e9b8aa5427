"""Process memory settings for CPU training: keep freed activation memory in the process, on huge pages.

A training step allocates and frees the same large activations every step (on SmolLM2, the MLP's `tokens x 1536`
tensors, 7 MB each in fp32). With glibc's defaults such blocks go back to the kernel when freed (mmap above a
threshold, heap trimming), and PyTorch's CPU allocator maps them in 4 KB pages, so every step faults the same memory
back in page by page and walks a deep page table on every TLB miss, more so in a virtual machine. In a profile of a
demo step, elementwise ops on those tensors ran at a twentieth of their speed on a warm buffer. Two settings
together remove most of it: PyTorch's `THP_MEM_ALLOC_ENABLE` (allocations of 2 MB and more on transparent huge
pages) and glibc's `mallopt` (blocks up to 32 MB served from the heap, which is never trimmed), so what one step
frees the next one reuses, already mapped. The cost: the process keeps its peak memory until it exits, and the first
step pays for mapping the huge pages. `bench/train_throughput.py` measures training with them (the `tailor` CLI
applies them for every command but the long-lived servers).

The PyTorch setting is read once, at its first allocation, so `tune()` must run before `import torch`; a value the
user already set in the environment (`THP_MEM_ALLOC_ENABLE`, `MALLOC_*_`) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: trim only past 2 GB of free heap top
TOP_PAD = 64 * 1024 * 1024  # grow the heap in large steps (address space only until touched)

_applied: dict[str, object] = {}


def tune() -> dict[str, object]:
    """Apply the settings (once per process, Linux with glibc only); what was applied, for run.json."""
    if _applied or not sys.platform.startswith("linux"):
        return dict(_applied)
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _applied["thp_mem_alloc"] = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    _applied["malloc_keeps_memory"] = False
    user_set = any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"))
    name = ctypes.util.find_library("c")
    if name and not user_set:
        try:
            libc = ctypes.CDLL(name)
            mallopt = getattr(libc, "mallopt", None)  # glibc; musl has none
            if mallopt is not None:
                ok = all(mallopt(param, value) == 1 for param, value in (
                    (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
                _applied["malloc_keeps_memory"] = ok
        except OSError:
            pass
    return dict(_applied)


def state() -> dict[str, object]:
    """What `tune()` applied in this process (empty when it was not called)."""
    return dict(_applied)
