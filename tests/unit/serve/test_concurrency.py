"""A real uvicorn server on localhost: 32 concurrent streaming clients get exactly their own answers, batched
together; a client that disconnects mid-stream stops its generation; with `serve.stream_interval_ms` a stream's
tokens arrive in fewer chunks, the first one at once, with the same text and usage."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from llmtailor.registry.db import Registry
from llmtailor.serve.app import create_app
from llmtailor.serve.metrics import parse
from tests.unit.serve.conftest import auth, build_engine, running_server

WORDS = "refund invoice login password portal billing ticket priority finance customer".split()


async def _stream(client: httpx.AsyncClient, key: str, model: str, content: str, max_tokens: int) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": True}
    parts = []
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(key)) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                parts.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
    return "".join(parts)


def test_32_concurrent_streams_are_batched_and_never_mixed(project):
    cfg = project["cfg"]
    key = project["keys"]["acme"]
    reg = Registry(cfg.registry.url)
    engine = build_engine(max_batch_size=32, batch_wait_ms=30)
    app = create_app(cfg, engine=engine, registry=reg)
    models = ["tiny", "ad-run-good", "ad-run-other", "tiny"]
    prompts = [(models[i % 4], f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} number {i}", 6 + i % 5) for i in range(32)]
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as c:  # each answer alone, one at a time
            solo = []
            for model, content, n in prompts:
                r = c.post("/v1/chat/completions", headers=auth(key), json={
                    "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": n})
                solo.append(r.json()["choices"][0]["message"]["content"])
        batches_before = engine.batches_run

        async def all_at_once() -> list[str]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                return await asyncio.gather(*(_stream(client, key, m, p, n) for m, p, n in prompts))

        streamed = asyncio.run(all_at_once())
    reg.close()
    assert streamed == solo
    assert len(set(solo)) > 8  # the prompts really give different answers, so a mix-up would show
    assert engine.batches_run - batches_before < 16, "concurrent requests were not batched"


@pytest.mark.parametrize("interval_ms", [0, 60_000])
def test_client_disconnect_stops_generation(project, interval_ms):
    """Also with a stream interval far longer than the answer: the first token is not held, so the client sees it
    and hangs up mid-answer."""
    cfg = project["cfg"]
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"max_tokens_limit": 480})})
    key = project["keys"]["acme"]
    reg = Registry(cfg.registry.url)
    engine = build_engine(stream_interval_ms=interval_ms)
    app = create_app(cfg, engine=engine, registry=reg)
    with running_server(app) as url:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 480,
                "stream": True}
        with httpx.Client(base_url=url, timeout=60) as c:
            with c.stream("POST", "/v1/chat/completions", json=body, headers=auth(key)) as r:
                for line in r.iter_lines():
                    if '"content"' in line and '"content": ""' not in line:
                        break  # first real token: hang up
            deadline = time.time() + 10
            metrics = {}
            while time.time() < deadline:
                metrics = parse(c.get("/metrics", headers=auth(key)).text)
                if metrics.get('llmtailor_cancelled_requests_total{model=tiny}'):
                    break
                time.sleep(0.05)
            assert metrics.get('llmtailor_cancelled_requests_total{model=tiny}') == 1.0
            assert metrics['llmtailor_generated_tokens_total{model=tiny}'] < 480
            # The engine is free again: a new request is answered at once.
            r = c.post("/v1/chat/completions", headers=auth(key), json={**body, "stream": False, "max_tokens": 3})
            assert r.json()["usage"]["completion_tokens"] == 3
    reg.close()


def _chunks(url: str, key: str, body: dict) -> list[dict]:
    with httpx.Client(base_url=url, timeout=60) as c, c.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}},
            headers=auth(key)) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]


def test_a_stream_interval_hands_over_less_often_with_the_same_text_and_usage(project):
    """With an interval far longer than the answer, the engine hands a stream to the event loop at most twice (its
    first delta, then everything else with the end) instead of once per token, and the client gets the same text,
    usage and finish reason as without one (the first token going out at once: test_client_disconnect_stops_...)."""
    cfg = project["cfg"]
    key = project["keys"]["acme"]
    reg = Registry(cfg.registry.url)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "refund my invoice please"}], "max_tokens": 24}
    answers = {}
    for interval_ms in (0, 60_000):
        engine = build_engine(stream_interval_ms=interval_ms)
        streams = []
        real = engine.stream

        def recorded(req, real=real, streams=streams):
            streams.append(real(req))
            return streams[-1]

        engine.stream = recorded
        app = create_app(cfg, engine=engine, registry=reg)
        with running_server(app) as url:
            whole = httpx.post(url + "/v1/chat/completions", json=body, headers=auth(key), timeout=60).json()
            answers[interval_ms] = (whole, _chunks(url, key, body), streams[-1].handovers)
    reg.close()
    streamed = []
    for whole, chunks, _ in answers.values():
        content = [ch["choices"][0]["delta"].get("content") for ch in chunks if ch["choices"]]
        streamed.append("".join(c for c in content if c))
        assert streamed[-1] == whole["choices"][0]["message"]["content"]
        assert chunks[-1]["usage"] == whole["usage"] and whole["usage"]["completion_tokens"] == 24
        assert [ch for ch in chunks if ch["choices"]][-1]["choices"][0]["finish_reason"] == "length"
    assert streamed[0] == streamed[1] and streamed[0]
    assert 1 <= answers[60_000][2] <= 2
