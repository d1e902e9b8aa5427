"""Run numpy's BLAS on one thread inside a block, process-wide, without leaking the setting.

Query-time matrix work here is small (one query vector, a few thousand rows per tenant, a 20-token BERT
pass). OpenBLAS's default of one thread per core makes such products much slower as soon as the cores are
busy: a 16x384 @ 384x1536 product measured 0.76 ms on one thread and 16 ms on two on a loaded 2-core machine.
The limit is process-wide (OpenBLAS has one setting), so nested or concurrent blocks are reference-counted:
the first block to enter sets one thread and the last one to leave restores what was there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_depth = 0
_saved: list[tuple[Any, int]] = []
_libs: list[Any] | None = None


def _blas_libs() -> list[Any]:
    global _libs
    if _libs is None:
        try:
            from threadpoolctl import ThreadpoolController

            _libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # threadpoolctl missing or a library it cannot drive: leave BLAS alone
            _libs = []
    return _libs


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """numpy's BLAS on one thread while any such block runs."""
    global _depth
    with _lock:
        if _depth == 0:
            _saved.clear()
            for lib in _blas_libs():
                try:
                    before = int(lib.num_threads)
                    if before != 1:
                        lib.set_num_threads(1)
                        _saved.append((lib, before))
                except Exception:  # pragma: no cover - a library that refuses; only speed is at stake
                    pass
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, before in _saved:
                    with contextlib.suppress(Exception):
                        lib.set_num_threads(before)
                _saved.clear()


def blas_threads() -> int | None:
    """Current BLAS thread count (None when it cannot be read); for tests and benchmarks."""
    libs = _blas_libs()
    return int(libs[0].num_threads) if libs else None
