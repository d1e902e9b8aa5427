"""Model store: local folders load, unknown names fail clearly, QLoRA refuses CPU."""

import pytest

from llmtailor.config import ModelConfig
from llmtailor.errors import ModelNotFoundError, TailorError
from llmtailor.models import load_model, resolve_model_dir


def test_local_folder_loads(tiny_model_dir):
    model, tok = load_model(ModelConfig(base_model=str(tiny_model_dir), device="cpu"))
    assert model.config.num_hidden_layers == 2 and tok.chat_template


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not available locally.*never downloads"):
        resolve_model_dir(ModelConfig(base_model="meta-llama/Llama-3-8B"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_dir(ModelConfig(base_model=str(tmp_path / "empty")))


def test_qlora_needs_cuda(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TailorError, match="CUDA"):
        load_model(ModelConfig(base_model=str(tiny_model_dir)), quantize_4bit=True)


def test_cuda_requested_without_gpu(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TailorError, match="no CUDA device"):
        load_model(ModelConfig(base_model=str(tiny_model_dir), device="cuda"))
