"""What the exporters need to know about a base GGUF file, and the layout rules shared by adapter and merged export.

llama.cpp's Llama graph expects the rows of the q/k projections interleaved per head differently from Hugging Face
(convert_hf_to_gguf.py's `LlamaModel.permute`); transformers undoes it when it loads a GGUF, so everything that goes
back into llama.cpp (merged q/k weights, the lora_b of q/k adapters) is permuted again here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError


@dataclass(frozen=True)
class ArchSpec:
    """One GGUF architecture the exporters handle: the HF model types that map onto it, and its q/k layout."""

    gguf_arch: str
    hf_model_types: tuple[str, ...]
    permute_qk: bool


# Only what has been checked against llama.cpp: Llama-family models (Llama 2/3, SmolLM, TinyLlama, Mistral dense).
SUPPORTED_ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", ("llama", "mistral"), permute_qk=True),
}


def supported_text() -> str:
    """The supported architectures, for error messages."""
    return ", ".join(f"{a} (Hugging Face model_type {'/'.join(s.hf_model_types)})" for a, s in SUPPORTED_ARCHS.items())


def check_arch(arch: str, what: str) -> ArchSpec:
    """The spec of `arch`, or a TailorError saying which architectures the exporter supports."""
    spec = SUPPORTED_ARCHS.get(arch)
    if spec is None:
        raise TailorError(f"{what}: architecture '{arch}' is not supported by the GGUF exporter; supported: "
                          f"{supported_text()}. Nothing was written.")
    return spec


@dataclass(frozen=True)
class BaseInfo:
    """A base GGUF's architecture, head counts and tensor shapes (numpy order: rows, columns)."""

    path: Path
    arch: str
    block_count: int
    n_head: int
    n_head_kv: int
    embedding_length: int
    vocab_size: int
    shapes: dict[str, tuple[int, ...]]
    chat_template: str | None

    def describe(self) -> str:
        return (f"{self.arch}, {self.block_count} layers, hidden {self.embedding_length}, "
                f"{self.n_head}/{self.n_head_kv} heads, vocab {self.vocab_size}")


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def open_reader(path: Path) -> Any:
    """A gguf.GGUFReader on `path` (memory-mapped, cheap), or a TailorError naming the file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise TailorError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise TailorError(f"{path}: not a readable GGUF file ({e})") from None


@functools.lru_cache(maxsize=8)
def _read_base(path: str, mtime_ns: int, size: int) -> BaseInfo:
    reader = open_reader(Path(path))
    arch = _field(reader, "general.architecture")
    if not arch:
        raise TailorError(f"{path}: GGUF file has no general.architecture")
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape.tolist())) for t in reader.tensors}
    n_head = int(_field(reader, f"{arch}.attention.head_count", 0) or 0)
    vocab = _field(reader, f"{arch}.vocab_size") or shapes.get("token_embd.weight", (0,))[0]
    return BaseInfo(
        path=Path(path), arch=str(arch), block_count=int(_field(reader, f"{arch}.block_count", 0) or 0),
        n_head=n_head, n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv", n_head) or n_head),
        embedding_length=int(_field(reader, f"{arch}.embedding_length", 0) or 0), vocab_size=int(vocab),
        shapes=shapes, chat_template=_field(reader, "tokenizer.chat_template"),
    )


def read_base(path: Path) -> BaseInfo:
    """Architecture, head counts and tensor shapes of a GGUF file (cached per file version)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise TailorError(f"{path}: base GGUF file not found")
    st = path.stat()
    return _read_base(str(path), st.st_mtime_ns, st.st_size)


def gguf_name(hf_name: str, info: BaseInfo) -> str | None:
    """The GGUF tensor name of a Hugging Face tensor (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`)
    through gguf's TensorNameMap, or None when the architecture has no such tensor."""
    import gguf

    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == info.arch), None)
    if arch is None:
        return None
    return _name_map(arch, info.block_count).get_name(hf_name, try_suffixes=(".weight", ".bias"))


@functools.lru_cache(maxsize=8)
def _name_map(arch: Any, blocks: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(arch, blocks)


def qk_heads(name: str, info: BaseInfo) -> tuple[int, int] | None:
    """(n_head, n_head_kv) to permute a q or k projection's rows with, or None for any other tensor."""
    if not SUPPORTED_ARCHS[info.arch].permute_qk:
        return None
    if ".attn_q." in name:
        return info.n_head, info.n_head
    if ".attn_k." in name:
        return info.n_head, info.n_head_kv
    return None


def permute_rows(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Hugging Face -> GGUF row order of a q/k projection (convert_hf_to_gguf.py's LlamaModel.permute)."""
    heads = n_head_kv  # convert_hf_to_gguf: k uses the kv head count; q passes n_head twice
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """GGUF -> Hugging Face row order (the inverse of `permute_rows`; what transformers does on load)."""
    heads = n_head_kv
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def copy_metadata(reader: Any, writer: Any, *, skip: tuple[str, ...] = ()) -> None:
    """Copy every key/value of a GGUF reader into a writer with its exact types (tokenizer, chat template, hparams)."""
    import gguf

    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in skip:
            continue
        main = field.types[0]
        sub = None
        if main == gguf.GGUFValueType.ARRAY:
            if len(field.types) > 2:
                raise TailorError(f"base GGUF metadata key {name} is a nested array, which the exporter cannot copy")
            sub = field.types[-1]
        value = field.contents()
        if name == "general.alignment":
            writer.data_alignment = int(value)
        writer.add_key_value(name, value, main, sub_type=sub)


def base_gguf(model_cfg: Any) -> Path:
    """The GGUF file of the configured base: the packaged file of a packaged model, or `model.gguf` in a local model
    folder (or base_model itself when it names a .gguf file). Adapters trained here apply exactly on that file."""
    from llmtailor.models import PACKAGED, _packaged_gguf

    name = model_cfg.base_model
    if name in PACKAGED:
        return _packaged_gguf(name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    if (path / "model.gguf").is_file():
        return path / "model.gguf"
    raise TailorError(
        f"base_model '{name}' has no GGUF file: llama.cpp needs one. Packaged bases ({', '.join(PACKAGED)}) ship "
        f"theirs; for a local folder put the base's GGUF at {path / 'model.gguf'} (llama.cpp's convert_hf_to_gguf.py "
        "makes one). Merged exports need it too: their tokenizer and metadata are copied from it. "
        f"Supported architectures: {supported_text()}."
    )
