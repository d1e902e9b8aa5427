"""Tiny random Llama models as base GGUF files and tiny LoRA adapters on them, for the GGUF exporter's tests.

`write_base_gguf` is a minimal Llama HF -> GGUF writer (metadata, byte-level BPE vocabulary, q/k permuted) so that
llama.cpp can load the tiny base when llama-cpp-python is installed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rope_theta(cfg) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def write_base_gguf(model, tok, path: Path, *, arch: str = "llama", hidden_override: int | None = None) -> Path:
    """The tiny HF model as an f32 GGUF (what convert_hf_to_gguf.py writes for a Llama, minus the extras)."""
    import gguf

    from llmtailor.export.ggufio import permute_rows

    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(hidden_override or cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_rope_dimension_count(cfg.hidden_size // n_head)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    spec = json.loads(tok.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    special = set(tok.all_special_ids)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        arr = t.detach().float().numpy()
        if ".attn_q." in name:
            arr = permute_rows(arr, n_head, n_head)
        elif ".attn_k." in name:
            arr = permute_rows(arr, n_head, n_kv)
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_lora(model, folder: Path, base_dir: Path | None = None, *, r: int = 4, alpha: float = 8, seed: int = 0,
              **extra) -> tuple[Path, object]:
    """A LoRA adapter with non-zero random A and B on a copy of `model`, saved to `folder`; returns (folder, peft)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=extra.pop("target_modules", TARGETS),
                     init_lora_weights=False, lora_dropout=0.0, **extra)
    peft = get_peft_model(copy.deepcopy(model), cfg)
    peft.save_pretrained(folder)
    if base_dir is not None:
        path = folder / "adapter_config.json"
        data = json.loads(path.read_text())
        data["base_model_name_or_path"] = str(base_dir)
        path.write_text(json.dumps(data))
    peft.eval()
    return folder, peft


@pytest.fixture()
def tiny_base(tiny_model, tiny_tokenizer, tmp_path):
    """(model, tokenizer, HF config folder, base GGUF path) for a tiny random Llama."""
    hf_dir = tmp_path / "tiny-hf"
    tiny_model.config.save_pretrained(hf_dir)
    gguf_path = write_base_gguf(tiny_model, tiny_tokenizer, tmp_path / "tiny-base.gguf")
    return tiny_model, tiny_tokenizer, hf_dir, gguf_path
