"""Engine choice without llama.cpp installed: auto falls back with the reason, an explicit ask fails with the hint."""

from __future__ import annotations

import pytest

from llmtailor.config import ModelConfig
from llmtailor.errors import TailorError
from llmtailor.serve import llamacpp_engine
from llmtailor.serve.engines import choose_engine


@pytest.fixture()
def no_llama(monkeypatch):
    monkeypatch.setattr(llamacpp_engine, "llama_cpp_available", lambda: False)


def test_auto_falls_back_to_transformers_and_says_why(no_llama):
    choice = choose_engine(ModelConfig(), "auto")
    assert choice.name == "transformers" and "llama-cpp-python is not installed" in choice.reason


def test_explicit_llamacpp_without_the_package_is_an_error_with_the_install_hint(no_llama):
    with pytest.raises(TailorError, match=r"pip install 'llmtailor\[llamacpp\]'"):
        choose_engine(ModelConfig(), "llamacpp")


def test_unknown_engine_is_refused():
    with pytest.raises(TailorError, match="choose one of"):
        choose_engine(ModelConfig(), "onnx")


def test_serve_cli_exits_non_zero_with_the_hint(no_llama, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from llmtailor.cli.main import app

    (tmp_path / "tailor.yaml").write_text("project: p\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["serve", "-c", str(tmp_path / "tailor.yaml"), "--engine", "llamacpp"])
    assert res.exit_code != 0 and "llmtailor[llamacpp]" in str(res.exception)


def test_transformers_base_without_gguf_is_not_llamacpp(tmp_path):
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = ModelConfig(base_model=str(tmp_path / "m"))
    assert choose_engine(cfg, "auto").name == "transformers"
    with pytest.raises(TailorError):  # no GGUF for this base (or, where it is not installed, no llama.cpp)
        choose_engine(cfg, "llamacpp")
