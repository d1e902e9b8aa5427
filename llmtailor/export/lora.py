"""A PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp applies at run time on the base GGUF.

Layout (what llama.cpp's llama-adapter.cpp reads, as convert_lora_to_gguf.py writes it): general.type=adapter,
adapter.type=lora, adapter.lora.alpha, and per target `<gguf tensor>.lora_a` (rank x in) and `.lora_b` (out x rank).
llama.cpp scales each pair by alpha / rank, with the rank read from the tensor. PEFT's own scale can differ (rsLoRA:
alpha / sqrt(rank); alpha_pattern: a per-module alpha), so wherever it does the difference is folded into lora_b and
the delta llama.cpp adds is exactly PEFT's. Like convert_lora_to_gguf, the q/k lora_b rows are permuted to GGUF order.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError
from llmtailor.export.ggufio import BaseInfo, check_arch, gguf_name, permute_rows, qk_heads, read_base
from llmtailor.io import atomic_path

MERGE_HINT = "export a merged model instead (`tailor export --merge`)"


@dataclass
class LoraPair:
    """One adapted weight: its GGUF name and the two factors, already in llama.cpp's layout."""

    name: str
    a: np.ndarray
    b: np.ndarray


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json, or a TailorError saying what the folder is not."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        if (Path(adapter_dir) / "config.json").exists():
            raise TailorError(f"{adapter_dir}: a full model folder, not a LoRA adapter; {MERGE_HINT}")
        raise TailorError(f"{adapter_dir}: no adapter_config.json; not a PEFT adapter folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TailorError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def check_adapter_config(cfg: dict[str, Any], adapter_dir: Path) -> None:
    """Refuse what llama.cpp cannot apply as a LoRA adapter, naming the way out."""
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise TailorError(f"{adapter_dir}: a {peft_type or 'non-LoRA'} adapter; llama.cpp applies LoRA adapters only; "
                          f"{MERGE_HINT}")
    if cfg.get("use_dora"):
        raise TailorError(f"{adapter_dir}: a DoRA adapter; llama.cpp has no DoRA (its magnitude vectors cannot be "
                          f"applied at run time); {MERGE_HINT}, which folds them into the weights")
    unsupported = {
        "modules_to_save": "fully trained modules (modules_to_save)",
        "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
        "layer_replication": "layer replication",
        "target_parameters": "LoRA on parameters (target_parameters)",
        "alora_invocation_tokens": "activated LoRA (aLoRA)",
    }
    for key, what in unsupported.items():
        if cfg.get(key):
            raise TailorError(f"{adapter_dir}: the adapter has {what}, which a GGUF LoRA adapter cannot carry; "
                              f"{MERGE_HINT}")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise TailorError(f"{adapter_dir}: the adapter trains biases, which a GGUF LoRA adapter cannot carry; "
                          f"{MERGE_HINT}")


def load_adapter_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    """The adapter's tensors as float32 numpy arrays (safetensors, or the older adapter_model.bin)."""
    import torch

    st = Path(adapter_dir) / "adapter_model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        raw = load_file(str(st), device="cpu")
    elif (Path(adapter_dir) / "adapter_model.bin").exists():
        raw = torch.load(Path(adapter_dir) / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise TailorError(f"{adapter_dir}: no adapter_model.safetensors (or .bin); did training finish?")
    return {k: v.detach().to(torch.float32).numpy() for k, v in raw.items()}


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern rule: a key matches the module's full name or a dotted suffix of it."""
    for key, value in (patterns or {}).items():
        if key == module or re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _expected_base_gguf(base_path: str) -> Path | None:
    """The GGUF an adapter's base folder came from: a packaged cache's packaged file, or <folder>/model.gguf."""
    from llmtailor.models import PACKAGED, _packaged_gguf

    folder = Path(base_path)
    if folder.name in PACKAGED:
        try:
            return _packaged_gguf(folder.name)
        except TailorError:
            return None
    found = folder / "model.gguf"
    return found if found.exists() else None


def _same_file(a: Path, b: Path) -> bool:
    import filecmp

    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or (a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False))


def check_adapter_base(cfg: dict[str, Any], info: BaseInfo, adapter_dir: Path) -> None:
    """The adapter must have been trained on this base: its config's base (file and hparams) against the GGUF."""
    base_path = cfg.get("base_model_name_or_path")
    if not base_path:
        return  # the tensor shapes are still checked
    expected = _expected_base_gguf(base_path)
    if expected is not None and not _same_file(expected, info.path):
        raise TailorError(f"{adapter_dir}: the adapter was trained on {base_path} (de-quantised from {expected.name}), "
                          f"but the base GGUF is {info.path}, a different file; llama.cpp would apply it to other "
                          "weights. Use the adapter's own base GGUF.")
    hf_cfg = Path(base_path) / "config.json"
    if not hf_cfg.exists():
        return
    hp = json.loads(hf_cfg.read_text(encoding="utf-8"))
    spec = check_arch(info.arch, str(info.path))
    if hp.get("model_type") not in spec.hf_model_types:
        raise TailorError(f"{adapter_dir}: the adapter's base {base_path} is a '{hp.get('model_type')}' model but the "
                          f"base GGUF is '{info.arch}' ({'/'.join(spec.hf_model_types)} models); wrong base GGUF")
    n_head = hp.get("num_attention_heads")
    want = {"layers": (hp.get("num_hidden_layers"), info.block_count),
            "hidden size": (hp.get("hidden_size"), info.embedding_length),
            "attention heads": (n_head, info.n_head),
            "key/value heads": (hp.get("num_key_value_heads", n_head), info.n_head_kv),
            "vocabulary": (hp.get("vocab_size"), info.vocab_size)}
    diffs = [f"{k} {a} vs {b}" for k, (a, b) in want.items() if a is not None and b and int(a) != int(b)]
    if diffs:
        raise TailorError(f"{adapter_dir}: the adapter's base {base_path} differs from the base GGUF {info.path.name} "
                          f"({'; '.join(diffs)}); it was trained on another model")


def lora_pairs(cfg: dict[str, Any], tensors: dict[str, np.ndarray], info: BaseInfo,
               adapter_dir: Path) -> tuple[list[LoraPair], float]:
    """The adapter's A/B pairs mapped, shape-checked, permuted and rescaled for llama.cpp, and the alpha to write."""
    check_arch(info.arch, str(info.path))
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if m is None:
            if "lora_magnitude_vector" in key:
                raise TailorError(f"{adapter_dir}: DoRA magnitude tensor {key}; llama.cpp has no DoRA; {MERGE_HINT}")
            if "lora_embedding_" in key or "embed_tokens" in key or "lm_head" in key:
                raise TailorError(f"{adapter_dir}: the adapter changes the token embeddings or output head ({key}), "
                                  f"which a GGUF LoRA adapter does not carry; {MERGE_HINT}")
            raise TailorError(f"{adapter_dir}: tensor {key} is not a LoRA A/B factor; a GGUF LoRA adapter cannot "
                              f"carry it; {MERGE_HINT}")
        halves.setdefault(m.group(1), {})[m.group(2)] = value
    if not halves:
        raise TailorError(f"{adapter_dir}: the adapter has no LoRA tensors")
    r0 = int(cfg.get("r", 8))
    alpha0 = float(cfg.get("lora_alpha", r0))
    rslora = bool(cfg.get("use_rslora"))
    default_scale = alpha0 / (math.sqrt(r0) if rslora else r0)
    out_alpha = default_scale * r0  # llama.cpp: scale = alpha / rank
    if out_alpha <= 0:  # llama.cpp reads alpha 0 as "scale 1", which is not what PEFT does
        raise TailorError(f"{adapter_dir}: lora_alpha is {alpha0}; the adapter has no effect and is not exported")
    pairs: list[LoraPair] = []
    for module, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise TailorError(f"{adapter_dir}: {module} has lora_{''.join(ab)} but not its pair")
        a, b = ab["A"], ab["B"]
        name = gguf_name(module + ".weight", info)
        if name is None or name not in info.shapes:
            if module.endswith("lm_head") and "output.weight" not in info.shapes:
                raise TailorError(f"{adapter_dir}: LoRA on lm_head, but the base GGUF ties its output to the token "
                                  f"embeddings so llama.cpp would ignore it; {MERGE_HINT}")
            raise TailorError(f"{adapter_dir}: the adapter targets {module}, which has no tensor in the base GGUF "
                              f"{info.path.name} ({info.describe()}); it was trained on another model")
        rows, cols = info.shapes[name]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != cols or b.shape[0] != rows or a.shape[0] != b.shape[1]:
            raise TailorError(f"{adapter_dir}: {module} is {b.shape[0]}x{a.shape[1]} (rank {a.shape[0]}) in the "
                              f"adapter but {name} is {rows}x{cols} in the base GGUF {info.path.name}; the adapter "
                              "was trained on another model")
        rank = a.shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, alpha0))
        scale = alpha / (math.sqrt(rank) if rslora else rank)
        factor = scale / (out_alpha / rank)
        if not math.isclose(factor, 1.0, rel_tol=1e-6):
            b = b * np.float32(factor)
        heads = qk_heads(name, info)
        if heads is not None:
            b = permute_rows(b, *heads)
        pairs.append(LoraPair(name, np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)))
    pairs.sort(key=lambda p: _order(p.name))
    return pairs, out_alpha


def _order(name: str) -> tuple[int, str]:
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def write_adapter_gguf(pairs: list[LoraPair], alpha: float, info: BaseInfo, out: Path, *, dtype: str = "f32",
                       name: str | None = None) -> Path:
    """Write the GGUF LoRA file atomically (temp file in out's folder, then os.replace)."""
    import gguf

    if dtype not in ("f32", "f16"):
        raise TailorError(f"a GGUF LoRA adapter is written in f32 or f16, not {dtype} (llama.cpp applies it on top of "
                          "the base's own quantization; quantize a merged model with --merge --quant)")
    np_dtype = np.float32 if dtype == "f32" else np.float16
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, info.arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        if name:
            writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        for p in pairs:
            writer.add_tensor(p.name + ".lora_a", p.a.astype(np_dtype))
            writer.add_tensor(p.name + ".lora_b", p.b.astype(np_dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def export_adapter_gguf(adapter_dir: Path, base: Path, out: Path, *, dtype: str = "f32") -> Path:
    """LoRA adapter folder -> GGUF LoRA adapter for `base` (checked against it first; nothing is written on refusal)."""
    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    check_adapter_config(cfg, adapter_dir)
    info = read_base(Path(base))
    check_arch(info.arch, str(info.path))
    check_adapter_base(cfg, info, adapter_dir)
    pairs, alpha = lora_pairs(cfg, load_adapter_tensors(adapter_dir), info, adapter_dir)
    label = adapter_dir.parent.name if adapter_dir.name == "adapter" else adapter_dir.name
    return write_adapter_gguf(pairs, alpha, info, Path(out), dtype=dtype, name=f"{label} (LoRA)")
