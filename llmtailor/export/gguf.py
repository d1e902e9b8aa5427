"""GGUF export, the API the llama.cpp serving engine and `tailor export` call.

- `base_gguf(model_cfg)`: the base's GGUF file (the packaged file for packaged bases).
- `export_adapter_gguf(adapter_dir, base, out)`: a PEFT LoRA adapter as a GGUF LoRA adapter for that base.
- `cached_adapter_gguf(adapter_dir, base)`: the same, cached under `home()/gguf` by content, reused when present.
- `export_merged_gguf(adapter_dir, model_cfg, out, quant)`: adapter merged into the base, one full GGUF file,
  quantized by llama.cpp's own quantizer unless quant is f16/f32.
- `QUANT_TYPES`: quantization names -> llama ftype.

Supported: the Llama family (`SUPPORTED_ARCHS`); anything else is refused before a file is written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from llmtailor.export.ggufio import SUPPORTED_ARCHS, base_gguf, read_base, supported_text
from llmtailor.export.lora import export_adapter_gguf
from llmtailor.export.merged import export_merged_gguf
from llmtailor.export.quant import QUANT_TYPES, check_quant

__all__ = ["QUANT_TYPES", "SUPPORTED_ARCHS", "adapter_fingerprint", "base_gguf", "cached_adapter_gguf",
           "check_quant", "export_adapter_gguf", "export_merged_gguf", "read_base", "supported_text"]

# Bump when the adapter file layout changes, so cached files written by an older exporter are not reused.
EXPORTER_VERSION = 1
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_fingerprint(adapter_dir: Path, base: Path) -> str:
    """Content hash of the adapter's files plus the base file's identity (path, size, mtime) and exporter version."""
    h = hashlib.sha256(f"llmtailor-gguf-lora-v{EXPORTER_VERSION}".encode())
    for name in _ADAPTER_FILES:
        path = Path(adapter_dir) / name
        if path.exists():
            h.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    st = Path(base).resolve().stat()
    h.update(f"|{Path(base).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cached_adapter_gguf(adapter_dir: Path, base: Path) -> Path:
    """The adapter's GGUF for `base` from the cache (`home()/gguf/lora-<hash>.gguf`), exported once (atomically)."""
    from llmtailor.models import home

    out = home() / "gguf" / f"lora-{adapter_fingerprint(adapter_dir, base)}.gguf"
    if out.is_file() and out.stat().st_size > 0:
        return out
    return export_adapter_gguf(Path(adapter_dir), Path(base), out)


def file_size_mb(path: Path) -> float:
    """Size on disk in MB (for what `tailor export` prints and records)."""
    return round(os.path.getsize(path) / 1e6, 1)
