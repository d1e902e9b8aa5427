"""Merged GGUF export on a tiny random Llama: weights round-trip through GGUF layout, metadata is the base's,
quantization requests are checked before any work, and nothing is half-written."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest

from llmtailor.config import ModelConfig
from llmtailor.errors import TailorError
from llmtailor.export import merged as merged_mod
from llmtailor.export.gguf import QUANT_TYPES, base_gguf, export_merged_gguf
from llmtailor.export.ggufio import unpermute_rows
from llmtailor.export.quant import check_quant
from tests.unit.export.conftest import make_lora, write_base_gguf


@pytest.fixture()
def tiny_folder(tiny_model, tiny_tokenizer, tmp_path):
    """A local HF model folder with its GGUF beside it as model.gguf (how a non-packaged base names its GGUF)."""
    folder = tmp_path / "tiny"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    write_base_gguf(tiny_model, tiny_tokenizer, folder / "model.gguf")
    return folder


def _read(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, np.array(t.data, dtype=np.float32).reshape(
        tuple(reversed(t.shape.tolist())))) for t in reader.tensors}
    return fields, tensors


def test_base_gguf_finds_packaged_and_local_files_and_says_what_is_missing(tiny_folder, tmp_path):
    packaged = base_gguf(ModelConfig())
    assert packaged.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and packaged.exists()
    assert base_gguf(ModelConfig(base_model=str(tiny_folder))) == tiny_folder / "model.gguf"
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(TailorError, match=r"has no GGUF file.*model\.gguf.*Supported architectures: llama"):
        base_gguf(ModelConfig(base_model=str(bare)))


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_merged_weights_round_trip_in_gguf_layout(tiny_folder, tiny_model, tmp_path, dtype):
    adapter, peft = make_lora(tiny_model, tmp_path / "ad", tiny_folder)
    out = export_merged_gguf(adapter, ModelConfig(base_model=str(tiny_folder)), tmp_path / "m.gguf", dtype)
    fields, tensors = _read(out)
    base_fields, base_tensors = _read(tiny_folder / "model.gguf")
    assert list(tensors) == list(base_tensors)  # the base's names and order
    assert fields["general.file_type"] == QUANT_TYPES[dtype]
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "llama.block_count"):
        assert fields[key] == base_fields[key]
    merged = copy.deepcopy(peft).merge_and_unload().state_dict()
    cfg = tiny_model.config
    tol = 1e-6 if dtype == "f32" else 2e-3
    changed = 0
    for hf_name, gg in (("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight"),
                        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"),
                        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
                        ("model.embed_tokens.weight", "token_embd.weight"),
                        ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight")):
        kind, arr = tensors[gg]
        assert kind == ("F32" if arr.ndim == 1 or dtype == "f32" else "F16")
        if gg.endswith("attn_q.weight"):
            arr = unpermute_rows(arr, cfg.num_attention_heads, cfg.num_attention_heads)
        elif gg.endswith("attn_k.weight"):
            arr = unpermute_rows(arr, cfg.num_attention_heads, cfg.num_key_value_heads)
        np.testing.assert_allclose(arr, merged[hf_name].numpy(), atol=tol, rtol=tol)
        changed += not np.allclose(arr, base_tensors[gg][1], atol=1e-4)
    assert changed == 3  # the adapter moved the three adapted weights, not the embeddings or the norm


def test_known_quant_types_and_clear_errors():
    assert {"f16", "q8_0", "q4_k_m", "q4_0"} <= set(QUANT_TYPES) and QUANT_TYPES["q8_0"] == 7
    assert check_quant("Q4_K_M") == "q4_k_m"
    with pytest.raises(TailorError, match=r"unknown quantization 'q9_9'.*knows f32, f16.*q8_0.*q4_k_m"):
        check_quant("q9_9")
    with pytest.raises(TailorError, match="importance matrix"):
        check_quant("iq2_xxs")


def test_quantization_without_llama_cpp_gives_the_install_hint_before_any_work(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    monkeypatch.setattr(merged_mod, "merged_state", lambda *a: pytest.fail("merged before checking llama_cpp"))
    with pytest.raises(TailorError, match=r"pip install 'llmtailor\[llamacpp\]'"):
        export_merged_gguf(None, ModelConfig(base_model=str(tiny_folder)), tmp_path / "q.gguf", "q8_0")
    assert not (tmp_path / "q.gguf").exists()


def test_unsupported_model_type_and_changed_vocabulary_are_refused(tiny_folder):
    from types import SimpleNamespace

    from llmtailor.export.ggufio import read_base

    info = read_base(tiny_folder / "model.gguf")
    with pytest.raises(TailorError, match=r"model type 'gpt2' is not supported.*Nothing was written"):
        merged_mod.check_model_matches(SimpleNamespace(model_type="gpt2", vocab_size=info.vocab_size), info)
    with pytest.raises(TailorError, match="tokens were added"):
        merged_mod.check_model_matches(SimpleNamespace(model_type="llama", vocab_size=info.vocab_size + 8), info)


def test_interrupted_merge_leaves_nothing_half_written(tiny_folder, tiny_model, tmp_path, monkeypatch):
    import gguf

    adapter, _ = make_lora(tiny_model, tmp_path / "ad", tiny_folder)
    out_dir = tmp_path / "out"
    cfg = ModelConfig(base_model=str(tiny_folder))

    def boom(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
        with pytest.raises(KeyboardInterrupt):
            export_merged_gguf(adapter, cfg, out_dir / "m.gguf", "f16")
    assert not out_dir.exists() or not any(out_dir.iterdir())
    pytest.importorskip("llama_cpp", reason="the quantized path needs llama-cpp-python (CI installs it)")
    with monkeypatch.context() as m:  # interrupted in the quantizer: neither the f16 input nor the output remains
        m.setattr(merged_mod, "quantize", boom)
        with pytest.raises(KeyboardInterrupt):
            export_merged_gguf(adapter, cfg, out_dir / "m-q8.gguf", "q8_0")
    assert not any(out_dir.iterdir())
