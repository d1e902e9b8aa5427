"""Quantization through llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`), never a re-implementation:
the file llama.cpp loads is the one its quantizer wrote.

Only the types llama.cpp quantizes without an importance matrix are offered; IQ1/IQ2/IQ3_XXS and Q2_K_S need one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.io import atomic_path

INSTALL_HINT = "pip install 'llmtailor[llamacpp]'"

# Name -> llama_ftype (the numbering of llama.h's enum llama_ftype and gguf.LlamaFileType).
QUANT_TYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "bf16": 32,
    "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_k_s": 16, "q5_1": 9, "q5_0": 8,
    "q4_k_m": 15, "q4_k_s": 14, "q4_1": 3, "q4_0": 2,
    "q3_k_l": 13, "q3_k_m": 12, "q3_k_s": 11, "q2_k": 10,
    "iq4_nl": 25, "iq4_xs": 30,
}
# Written by llmtailor itself (no llama.cpp needed); every other type goes through llama.cpp's quantizer.
UNQUANTIZED = ("f32", "f16")
NEEDS_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "q2_k_s")


def check_quant(name: str) -> str:
    """The canonical quantization name, or a TailorError listing the known ones."""
    key = (name or "").strip().lower().replace("-", "_")
    if key in QUANT_TYPES:
        return key
    known = ", ".join(QUANT_TYPES)
    if key in NEEDS_IMATRIX:
        raise TailorError(f"quantization '{name}' needs an importance matrix (imatrix), which `tailor export` does not "
                          f"compute; known types: {known}")
    raise TailorError(f"unknown quantization '{name}': llama.cpp's quantizer knows {known}")


def require_llama_cpp(why: str) -> Any:
    """The llama_cpp module, or a TailorError with the install hint (checked before any slow work)."""
    try:
        import llama_cpp
    except ImportError:
        raise TailorError(f"{why} needs llama.cpp's Python binding, which is not installed: {INSTALL_HINT}") from None
    if not hasattr(llama_cpp, "llama_model_quantize"):
        raise TailorError(f"the installed llama-cpp-python has no llama_model_quantize; upgrade it: {INSTALL_HINT}")
    return llama_cpp


class _Captured:
    text = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """Route the C library's stderr (fd 2) into a buffer: llama.cpp logs a line per tensor; errors show its tail."""
    got = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield got
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            got.text = buf.read().decode("utf-8", errors="replace")


def quantize(src: Path, out: Path, quant: str, *, threads: int | None = None) -> Path:
    """Quantize a f16/f32 GGUF into `out` with llama.cpp (atomic: a temp file in out's folder, then a rename)."""
    quant = check_quant(quant)
    llama_cpp = require_llama_cpp(f"quantizing to {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = threads or os.cpu_count() or 1
    with atomic_path(out) as tmp:
        with captured_stderr() as log:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:  # raised inside atomic_path: the temp file is removed, `out` is never touched
            tail = " | ".join(line.strip() for line in log.text.strip().splitlines()[-3:])
            raise TailorError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}): {tail or 'no log'}")
    return Path(out)
