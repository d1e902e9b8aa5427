"""Integration: `tailor serve --engine vllm` starts vLLM's OpenAI server on the packaged SmolLM2 with a LoRA adapter.

Runs only where vLLM can: a CUDA GPU and the vllm package. Everywhere else it is skipped with that reason; the
mapping from tailor.yaml to vLLM's command line is covered by tests/unit/serve/test_vllm_engine.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (GPU machines only)"),
]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_vllm_serves_base_and_adapter(tmp_path: Path):
    if not _cuda():
        pytest.skip("vLLM needs a CUDA GPU; none on this machine")
    import openai
    import torch
    from peft import LoraConfig, get_peft_model

    from llmtailor.config import load_config
    from llmtailor.models import load_model
    from tests.unit.serve.conftest import free_port, wait_healthy

    (tmp_path / "tailor.yaml").write_text("project: acme\nserve:\n  require_api_key: false\n  aliases:\n"
                                          "    tuned:\n      adapter: adapter\n")
    model, _ = load_model(load_config(tmp_path / "tailor.yaml").model)
    torch.manual_seed(0)
    pm = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    pm.save_pretrained(tmp_path / "adapter")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llmtailor.cli.main", "serve", "--engine", "vllm", "--port",
                             str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=600, poll=2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        names = {m.id for m in client.models.list().data}
        assert {"smollm2-135m-instruct", "tuned"} <= names
        ask = [{"role": "user", "content": "Name a colour."}]
        base = client.chat.completions.create(model="smollm2-135m-instruct", messages=ask, max_tokens=8,
                                              temperature=0)
        tuned = client.chat.completions.create(model="tuned", messages=ask, max_tokens=8, temperature=0)
        assert base.choices[0].message.content and tuned.choices[0].message.content is not None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
