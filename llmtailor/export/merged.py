"""A tuned model as one full GGUF file: the adapter merged into the fp32 base, then (optionally) llama.cpp-quantized.

The metadata (hyper-parameters, tokenizer, chat template) is copied key by key from the base GGUF the model was
de-quantised from, and every tensor is replaced by the merged one, in the base file's order, q/k rows permuted back
to GGUF layout. So the file is the base GGUF with new weights: llama.cpp tokenizes exactly as it does for the base.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError
from llmtailor.export.ggufio import (
    BaseInfo,
    base_gguf,
    check_arch,
    copy_metadata,
    gguf_name,
    open_reader,
    permute_rows,
    qk_heads,
    read_base,
)
from llmtailor.export.quant import UNQUANTIZED, check_quant, quantize, require_llama_cpp
from llmtailor.io import atomic_path


def merged_state(adapter_dir: Path | None, model_cfg: Any) -> tuple[dict[str, np.ndarray], Any]:
    """fp32 weights of base + adapter merged (PEFT merge_and_unload; DoRA too), or of a full fine-tuned folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmtailor.models import _offline, resolve_model_dir

    _offline()
    folder = resolve_model_dir(model_cfg)
    if adapter_dir is not None and (Path(adapter_dir) / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32)  # a full fine-tune
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if adapter_dir is not None:
            from peft import PeftModel

            if not (Path(adapter_dir) / "adapter_config.json").exists():
                raise TailorError(f"{adapter_dir}: neither a PEFT adapter (adapter_config.json) nor a model folder")
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    with torch.no_grad():
        state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    return state, model.config


def check_model_matches(config: Any, info: BaseInfo) -> None:
    """The merged model must be the base GGUF's architecture and vocabulary (its tokenizer is reused)."""
    spec = check_arch(info.arch, str(info.path))
    model_type = getattr(config, "model_type", None)
    if model_type not in spec.hf_model_types:
        raise TailorError(f"model type '{model_type}' is not supported by the GGUF exporter (base GGUF "
                          f"{info.path.name} is '{info.arch}': {'/'.join(spec.hf_model_types)} models). "
                          "Nothing was written.")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and int(vocab) != info.vocab_size:
        raise TailorError(f"the model's vocabulary ({vocab}) differs from the base GGUF's ({info.vocab_size}): tokens "
                          "were added in training, so the base's tokenizer cannot be reused. Nothing was written.")


def write_full_gguf(tensors: Mapping[str, np.ndarray], base: Path, out: Path, *, dtype: str = "f16",
                    tied: bool = True) -> Path:
    """Write `tensors` (Hugging Face names) as a full GGUF shaped like `base`: its metadata, its tensor names and order.

    Refuses (writing nothing) when a tensor has no place in the base or a shape differs. 2-D weights are stored in
    `dtype` (f16 or f32), 1-D ones (norms) in f32 as convert_hf_to_gguf does. Atomic: temp file, then os.replace."""
    import gguf

    if dtype not in ("f16", "f32"):
        raise TailorError(f"a full GGUF is written in f16 or f32 before quantization, not {dtype}")
    info = read_base(base)
    check_arch(info.arch, str(info.path))
    placed: dict[str, str] = {}
    for hf_name in tensors:
        name = gguf_name(hf_name, info)
        if name == "output.weight" and "output.weight" not in info.shapes and tied:
            continue  # tied to token_embd: llama.cpp reuses the embeddings
        if name is None or name not in info.shapes:
            raise TailorError(f"tensor {hf_name} has no counterpart in the base GGUF {info.path.name} "
                              f"({info.describe()}); nothing was written")
        placed[name] = hf_name
    reader = open_reader(info.path)
    kept = [t.name for t in reader.tensors if t.name not in placed]
    computed = [n for n in kept if not n.startswith("rope_freqs")]
    if computed:
        raise TailorError(f"the merged model has no tensor for {', '.join(computed[:5])} of the base GGUF; "
                          "nothing was written")
    ftype = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    wide = np.float16 if dtype == "f16" else np.float32
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, info.arch)
        copy_metadata(reader, writer, skip=("general.file_type",))
        writer.add_file_type(ftype)
        for t in reader.tensors:
            if t.name not in placed:
                writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)  # rope_freqs: copied as is
                continue
            arr = tensors[placed[t.name]]
            if tuple(arr.shape) != info.shapes[t.name]:
                raise TailorError(f"{placed[t.name]} is {tuple(arr.shape)} but {t.name} is {info.shapes[t.name]} in "
                                  f"the base GGUF {info.path.name}; the model is not that base. Nothing was written.")
            heads = qk_heads(t.name, info)
            if heads is not None:
                arr = permute_rows(arr, *heads)
            writer.add_tensor(t.name, np.ascontiguousarray(arr, dtype=np.float32 if arr.ndim == 1 else wide))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def export_merged_gguf(adapter_dir: Path | None, model_cfg: Any, out: Path, quant: str = "f16", *,
                       base: Path | None = None) -> Path:
    """Merge the adapter into the fp32 base, write a full GGUF, quantize it with llama.cpp unless quant is f16/f32.

    Every check that can fail (quant name, llama-cpp-python installed, base GGUF and architecture) runs before the
    merge, so a bad request costs no time and writes nothing."""
    quant = check_quant(quant)
    if quant not in UNQUANTIZED:
        require_llama_cpp(f"--quant {quant}")
    base = Path(base) if base is not None else base_gguf(model_cfg)
    info = read_base(base)
    check_arch(info.arch, str(info.path))
    if adapter_dir is not None:
        from llmtailor.export.lora import check_adapter_base, read_adapter_config

        if (Path(adapter_dir) / "adapter_config.json").exists():
            check_adapter_base(read_adapter_config(adapter_dir), info, Path(adapter_dir))
        elif not (Path(adapter_dir) / "config.json").exists():
            raise TailorError(f"{adapter_dir}: neither a PEFT adapter (adapter_config.json) nor a model folder")
    state, config = merged_state(adapter_dir, model_cfg)
    check_model_matches(config, info)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if quant in UNQUANTIZED:
        return write_full_gguf(state, base, Path(out), dtype=quant, tied=tied)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, inter = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".f16.tmp", dir=out.parent)
    os.close(fd)
    try:
        # f16 is llama.cpp's usual quantization input; bf16 output gets an f32 input (no f16 rounding first).
        write_full_gguf(state, base, Path(inter), dtype="f32" if quant == "bf16" else "f16", tied=tied)
        del state
        return quantize(Path(inter), out, quant)
    finally:
        Path(inter).unlink(missing_ok=True)
