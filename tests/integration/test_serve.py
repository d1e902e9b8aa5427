"""Integration: `tailor serve` on the packaged SmolLM2, called with the official `openai` SDK, streaming included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def tailor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmtailor.cli.main", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.unit.serve.conftest import free_port, wait_healthy

    root = tmp_path_factory.mktemp("serve-int")
    (root / "tailor.yaml").write_text(
        "project: acme\n"
        "serve:\n  max_tokens_limit: 512\n  aliases:\n    triage:\n      system_prompt: Answer in one sentence.\n"
    )
    r = tailor("keys", "create", "--tenant", "acme", "--models", "*", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)["key"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmtailor.cli.main", "serve", "--port", str(port)], cwd=root,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, timeout=180)
    yield url, key
    proc.terminate()
    proc.wait(timeout=30)


def test_openai_sdk_chat_stream_models_embeddings_and_errors(server):
    import openai

    url, key = server
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    names = [m.id for m in client.models.list().data]
    assert names[:2] == ["smollm2-135m-instruct", "triage"] and "all-minilm-l6-v2" in names

    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    whole = client.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=24)
    text = whole.choices[0].message.content
    assert "Paris" in text and whole.usage.completion_tokens <= 24

    chunks = list(client.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text and len([c for c in chunks if c.choices]) > 5  # really token by token
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    emb = client.embeddings.create(model="all-minilm-l6-v2", input=["refund policy", "money back"])  # base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model="triage", messages=[{"role": "user", "content": "hi " * 9000}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="tlr-wrong", max_retries=0).models.list()
