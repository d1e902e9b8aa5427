"""GGUF LoRA adapter export on tiny random Llamas: tensor names, q/k permutation, alpha and scaling, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmtailor.errors import TailorError
from llmtailor.export import lora as lora_mod
from llmtailor.export.gguf import cached_adapter_gguf, export_adapter_gguf
from llmtailor.export.ggufio import permute_rows, unpermute_rows
from tests.unit.export.conftest import make_lora, write_base_gguf


def _reference_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    return fields, tensors


def _peft_factors(peft, module: str):
    """(A, B, scaling) of one PEFT LoRA module by its HF path, e.g. model.layers.0.self_attn.q_proj."""
    layer = peft.get_submodule("base_model.model." + module)
    return (layer.lora_A["default"].weight.detach().numpy(), layer.lora_B["default"].weight.detach().numpy(),
            layer.scaling["default"])


def test_permutation_matches_convert_hf_to_gguf_and_inverts():
    rng = np.random.default_rng(0)
    for heads, kv, rows in ((4, 4, 32), (4, 2, 16), (9, 3, 192)):
        w = rng.standard_normal((rows, 7)).astype(np.float32)
        np.testing.assert_array_equal(permute_rows(w, heads, kv), _reference_permute(w, heads, kv))
        np.testing.assert_array_equal(unpermute_rows(permute_rows(w, heads, kv), heads, kv), w)
    b = rng.standard_normal((16, 3)).astype(np.float32)  # a lora_b permutes like the weight rows (B @ A)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(permute_rows(b, 4, 2) @ a, permute_rows(b @ a, 4, 2), rtol=1e-6)


def test_adapter_gguf_layout_names_permutation_and_alpha(tiny_base, tmp_path):
    model, _, hf_dir, base = tiny_base
    adapter, peft = make_lora(model, tmp_path / "ad", hf_dir, r=4, alpha=8)
    out = export_adapter_gguf(adapter, base, tmp_path / "out" / "a.gguf")
    fields, tensors = _read(out)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and math.isclose(fields["adapter.lora.alpha"], 8.0)
    gnames = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    expected = {f"blk.{i}.{g}.weight.lora_{x}" for i in range(2) for g in gnames.values() for x in "ab"}
    assert set(tensors) == expected
    cfg = model.config
    for i in range(2):
        for hf, g in gnames.items():
            part = "self_attn" if hf in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            a, b, scaling = _peft_factors(peft, f"model.layers.{i}.{part}.{hf}")
            assert math.isclose(scaling, 8 / 4)
            np.testing.assert_array_equal(tensors[f"blk.{i}.{g}.weight.lora_a"], a)
            want_b = {"attn_q": permute_rows(b, cfg.num_attention_heads, cfg.num_attention_heads),
                      "attn_k": permute_rows(b, cfg.num_attention_heads, cfg.num_key_value_heads)}.get(g, b)
            np.testing.assert_array_equal(tensors[f"blk.{i}.{g}.weight.lora_b"], want_b)
            if g in ("attn_q", "attn_k"):
                assert not np.array_equal(want_b, b)  # the permutation really moves rows at these head counts


@pytest.mark.parametrize("extra", [{"use_rslora": True}, {"alpha_pattern": {"q_proj": 2.0}},
                                   {"rank_pattern": {"down_proj": 2}}])
def test_peft_scaling_is_what_llama_cpp_applies(tiny_base, tmp_path, extra):
    """llama.cpp scales by alpha / rank; rsLoRA and per-module alpha/rank must still give PEFT's delta exactly."""
    model, _, hf_dir, base = tiny_base
    adapter, peft = make_lora(model, tmp_path / "ad", hf_dir, r=4, alpha=8, **extra)
    fields, tensors = _read(export_adapter_gguf(adapter, base, tmp_path / "a.gguf"))
    alpha = fields["adapter.lora.alpha"]
    cfg = model.config
    for module, g, part in (("q_proj", "attn_q", "self_attn"), ("v_proj", "attn_v", "self_attn"),
                            ("down_proj", "ffn_down", "mlp")):
        a, b, scaling = _peft_factors(peft, f"model.layers.1.{part}.{module}")
        la, lb = tensors[f"blk.1.{g}.weight.lora_a"], tensors[f"blk.1.{g}.weight.lora_b"]
        if g == "attn_q":
            lb = unpermute_rows(lb, cfg.num_attention_heads, cfg.num_attention_heads)
        rank = la.shape[0]
        np.testing.assert_allclose((alpha / rank) * (lb @ la), scaling * (b @ a), rtol=1e-5, atol=1e-7)


def test_wrong_base_is_refused_with_the_reason_and_nothing_written(tiny_base, tiny_tokenizer, tmp_path):
    from tests.conftest import build_tiny_model

    model, _, hf_dir, _ = tiny_base
    adapter, _ = make_lora(model, tmp_path / "ad", hf_dir)
    other = build_tiny_model(tiny_tokenizer)
    other.config.hidden_size = 48  # a different model: hparams in the GGUF differ from the adapter's base
    bigger = write_base_gguf(other, tiny_tokenizer, tmp_path / "other.gguf", hidden_override=48)
    out = tmp_path / "o" / "a.gguf"
    with pytest.raises(TailorError, match="hidden size 32 vs 48"):
        export_adapter_gguf(adapter, bigger, out)
    # Without a readable base config, the tensor shapes still catch it.
    data = json.loads((adapter / "adapter_config.json").read_text())
    data["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(data))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**model.config.to_dict(), "intermediate_size": 96})
    torch.manual_seed(1)
    wide = write_base_gguf(LlamaForCausalLM(cfg), tiny_tokenizer, tmp_path / "wide.gguf")
    shape_msg = r"in the adapter but blk\.\d\.ffn_\w+\.weight is \d+x\d+ in the base GGUF wide\.gguf; the adapter was"
    with pytest.raises(TailorError, match=shape_msg):
        export_adapter_gguf(adapter, wide, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_packaged_base_must_be_the_packaged_file(tiny_base, tmp_path, monkeypatch):
    """An adapter trained on the packaged model's cache is refused on any other GGUF, even one of the same shape."""
    import llmtailor.models as models

    model, tok, _, base = tiny_base
    packaged = write_base_gguf(model, tok, tmp_path / "packaged.gguf")
    monkeypatch.setattr(models, "_packaged_gguf", lambda name: packaged)
    adapter, _ = make_lora(model, tmp_path / "ad", tmp_path / "cache" / "smollm2-135m-instruct")
    other = tmp_path / "other-quant.gguf"
    other.write_bytes(base.read_bytes()[:-4] + b"\x01\x02\x03\x04")  # same shapes, different weights
    with pytest.raises(TailorError, match="a different file"):
        export_adapter_gguf(adapter, other, tmp_path / "a.gguf")
    assert export_adapter_gguf(adapter, packaged, tmp_path / "a.gguf").exists()


def test_unsupported_architecture_is_refused_before_writing(tiny_model, tiny_tokenizer, tmp_path):
    base = write_base_gguf(tiny_model, tiny_tokenizer, tmp_path / "q.gguf", arch="qwen2")
    adapter, _ = make_lora(tiny_model, tmp_path / "ad")
    out = tmp_path / "out" / "a.gguf"
    with pytest.raises(TailorError, match=r"architecture 'qwen2' is not supported.*supported: llama"):
        export_adapter_gguf(adapter, base, out)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.parametrize(("extra", "message"), [
    ({"use_dora": True}, "llama.cpp has no DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "token embeddings"),
])
def test_adapters_llama_cpp_cannot_apply_are_refused_with_the_merge_hint(tiny_base, tmp_path, extra, message):
    model, _, hf_dir, base = tiny_base
    adapter, _ = make_lora(model, tmp_path / "ad", hf_dir, **extra)
    with pytest.raises(TailorError, match=message) as err:
        export_adapter_gguf(adapter, base, tmp_path / "a.gguf")
    assert "--merge" in str(err.value) and not (tmp_path / "a.gguf").exists()


def test_interrupted_write_leaves_no_file_under_the_final_name(tiny_base, tmp_path, monkeypatch):
    import gguf

    model, _, hf_dir, base = tiny_base
    adapter, _ = make_lora(model, tmp_path / "ad", hf_dir)
    out = tmp_path / "out" / "a.gguf"
    out.parent.mkdir()
    out.write_bytes(b"previous export")

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(KeyboardInterrupt):
        export_adapter_gguf(adapter, base, out)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in out.parent.iterdir()] == ["a.gguf"]  # no temp file left


def test_cached_adapter_is_reused_and_keyed_by_content(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMTAILOR_HOME", str(tmp_path / "home"))
    model, _, hf_dir, base = tiny_base
    adapter, _ = make_lora(model, tmp_path / "ad", hf_dir)
    first = cached_adapter_gguf(adapter, base)
    assert first.parent == tmp_path / "home" / "gguf" and first.exists()
    calls = []
    monkeypatch.setattr(lora_mod, "write_adapter_gguf", lambda *a, **k: calls.append(a))
    assert cached_adapter_gguf(adapter, base) == first and not calls
    make_lora(model, adapter, hf_dir, seed=3)  # new weights in the same folder: a new cache entry
    monkeypatch.undo()
    monkeypatch.setenv("LLMTAILOR_HOME", str(tmp_path / "home"))
    second = cached_adapter_gguf(adapter, base)
    assert second != first and second.exists()
