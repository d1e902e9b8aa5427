"""llama.cpp itself runs the exported files of a tiny random Llama: its logits must be the PEFT model's.

A wrong q/k permutation, a wrong alpha/rank scale or a transposed factor changes every logit, so these catch any
layout mistake the file-level tests could share with the exporter.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from llmtailor.config import ModelConfig
from llmtailor.errors import TailorError
from llmtailor.export.gguf import export_adapter_gguf, export_merged_gguf
from llmtailor.export.quant import quantize
from tests.unit.export.conftest import make_lora, write_base_gguf

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp's OpenMP runtime loads
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (CI installs it)")

IDS = [1, 40, 41, 42, 60, 61, 100, 101, 150, 200, 33, 34, 35, 2, 1, 77, 78, 79, 80, 81]


def llama_logits(model_path, lora_path=None) -> np.ndarray:
    kw = {"lora_path": str(lora_path)} if lora_path else {}
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                          n_threads=1, n_threads_batch=1, seed=0, **kw)
    llm.eval(IDS)
    out = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    llm.close()
    return out


def hf_logits(model) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].float().numpy()


@pytest.fixture()
def tiny_folder(tiny_model, tiny_tokenizer, tmp_path):
    folder = tmp_path / "tiny"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    write_base_gguf(tiny_model, tiny_tokenizer, folder / "model.gguf")
    return folder


def test_base_gguf_of_the_tests_is_what_transformers_computes(tiny_folder, tiny_model):
    np.testing.assert_allclose(llama_logits(tiny_folder / "model.gguf"), hf_logits(tiny_model), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("extra", [{}, {"use_rslora": True, "alpha_pattern": {"v_proj": 3.0}}])
def test_llama_cpp_applies_the_adapter_like_peft(tiny_folder, tiny_model, tmp_path, extra):
    adapter, peft = make_lora(tiny_model, tmp_path / "ad", tiny_folder, r=4, alpha=16, **extra)
    want = hf_logits(peft)
    assert not np.allclose(want, hf_logits(tiny_model), atol=1e-2)  # the adapter changes the outputs
    gguf_adapter = export_adapter_gguf(adapter, tiny_folder / "model.gguf", tmp_path / "a.gguf")
    got = llama_logits(tiny_folder / "model.gguf", gguf_adapter)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_llama_cpp_runs_the_merged_files_like_the_merged_model(tiny_folder, tiny_model, tmp_path):
    import gguf

    adapter, peft = make_lora(tiny_model, tmp_path / "ad", tiny_folder, r=4, alpha=16)
    want = hf_logits(copy.deepcopy(peft).merge_and_unload())
    cfg = ModelConfig(base_model=str(tiny_folder))
    f32 = export_merged_gguf(adapter, cfg, tmp_path / "m-f32.gguf", "f32")
    np.testing.assert_allclose(llama_logits(f32), want, atol=2e-3, rtol=1e-3)
    f16 = llama_logits(export_merged_gguf(adapter, cfg, tmp_path / "m-f16.gguf", "f16"))
    np.testing.assert_allclose(f16, want, atol=3e-2, rtol=3e-2)
    q8 = export_merged_gguf(adapter, cfg, tmp_path / "m-q8_0.gguf", "q8_0")
    assert gguf.GGUFReader(q8).fields["general.file_type"].contents() == 7
    got = llama_logits(q8)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_dora_is_refused_as_an_adapter_but_merges(tiny_folder, tiny_model, tmp_path):
    adapter, peft = make_lora(tiny_model, tmp_path / "ad", tiny_folder, r=4, alpha=16, use_dora=True)
    with pytest.raises(TailorError, match="no DoRA"):
        export_adapter_gguf(adapter, tiny_folder / "model.gguf", tmp_path / "a.gguf")
    merged = export_merged_gguf(adapter, ModelConfig(base_model=str(tiny_folder)), tmp_path / "m.gguf", "f32")
    np.testing.assert_allclose(llama_logits(merged), hf_logits(peft), atol=2e-3, rtol=1e-3)


def test_a_failed_quantization_names_the_cause_and_writes_nothing(tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF but not really")
    out = tmp_path / "out.gguf"
    with pytest.raises(TailorError, match="llama.cpp could not quantize not-a-model.gguf to q8_0"):
        quantize(bad, out, "q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model.gguf"]
