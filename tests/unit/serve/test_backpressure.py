"""Finding 8 of the security review (rest): a server under load degrades predictably.

A non-streaming request whose client disconnects stops decoding; the engine queue is bounded and a full queue answers
503 with Retry-After in OpenAI's error shape (streaming or not); queued requests are admitted round-robin across API
keys, so one key flooding the server cannot starve another. Also: streamed SSE frames are the same JSON as before.
"""

from __future__ import annotations

import asyncio
import json
import time

from llmtailor.serve.engine import Engine, GenRequest, fair_order
from tests.conftest import build_tiny_model, build_tiny_tokenizer
from tests.unit.serve.conftest import auth


class Stalled(Engine):
    """An engine whose worker never admits anything: requests stay queued (a server at capacity)."""

    def _loop(self) -> None:
        while self._running:
            time.sleep(0.01)


def test_full_queue_answers_503_with_retry_after_in_openai_shape(project):
    from fastapi.testclient import TestClient

    from llmtailor.registry.db import Registry
    from llmtailor.serve.app import create_app

    tok = build_tiny_tokenizer()
    engine = Stalled(build_tiny_model(tok), tok, max_queue=2)
    reg = Registry(project["cfg"].registry.url)
    key = project["keys"]["acme"]
    with TestClient(create_app(project["cfg"], engine=engine, registry=reg)) as c:
        for _ in range(2):  # fill the queue
            engine.submit(GenRequest([5, 6, 7], 4))
        for stream in (False, True):
            r = c.post("/v1/chat/completions", headers=auth(key),
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                             "stream": stream})
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            err = r.json()["error"]
            assert err["code"] == "server_overloaded" and err["type"] == "server_error"
            assert "max_queue" in err["message"]
        assert len(engine._pending) == 2  # refused requests were never queued
    reg.close()


def test_queued_requests_are_admitted_round_robin_across_keys():
    tok = build_tiny_tokenizer()
    engine = Engine(build_tiny_model(tok), tok, max_batch_size=4).start()
    try:
        with engine._cond:  # the worker cannot take anything while the test holds the lock (re-entrant for us)
            flood = [engine.submit(GenRequest([5, 6, 7], 2, owner="key-A")) for _ in range(20)]
            late = engine.submit(GenRequest([8, 9], 2, owner="key-B"))
            taken = engine._take(wait=False)
            assert late in taken and len(taken) == 4  # B gets one of the next 4 slots, not the 21st
            assert [r for r in engine._pending] == [r for r in flood if r not in taken]  # the rest keep their order
            for r in engine._pending:
                r.cancel()
    finally:
        engine.stop()
    a = [GenRequest([1], 1, owner="a") for _ in range(3)]
    b = [GenRequest([2], 1, owner="b") for _ in range(2)]
    assert fair_order([*a, *b]) == [a[0], b[0], a[1], b[1], a[2]]
    assert fair_order(a) == a


def test_non_streaming_request_stops_decoding_when_the_client_disconnects(project):
    from llmtailor.registry.db import Registry
    from llmtailor.serve.app import create_app

    tok = build_tiny_tokenizer()
    engine = Engine(build_tiny_model(tok), tok, batch_wait_ms=1)
    forward = engine._forward

    def slow_forward(*a, **kw):  # 40 ms a step: the 64-token answer would take 2.6 s
        time.sleep(0.04)
        return forward(*a, **kw)

    engine._forward = slow_forward
    submitted: list[GenRequest] = []
    submit = engine.submit

    def spy(req: GenRequest) -> GenRequest:
        submitted.append(req)
        return submit(req)

    engine.submit = spy
    reg = Registry(project["cfg"].registry.url)
    app = create_app(project["cfg"], engine=engine, registry=reg)
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64,
                       "temperature": 0}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"authorization", f"Bearer {project['keys']['acme']}".encode())]}
    sent: list[dict] = []

    async def run() -> None:
        gone = asyncio.Event()
        first = True

        async def receive() -> dict:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(msg: dict) -> None:
            sent.append(msg)

        task = asyncio.create_task(app(scope, receive, send))
        deadline = time.time() + 30
        while not (submitted and len(submitted[0].ids) >= 2):
            assert time.time() < deadline and not task.done(), sent
            await asyncio.sleep(0.01)
        gone.set()  # the client hangs up, long before 64 tokens
        await asyncio.wait_for(task, 30)

    engine.start()
    try:
        asyncio.run(run())
    finally:
        engine.stop()
        app.state.server.close()
        reg.close()
    req = submitted[0]
    assert req.finish_reason == "cancelled" and len(req.ids) < 20, (req.finish_reason, len(req.ids))
    assert sent[0]["status"] == 499


def test_fast_sse_frames_are_the_same_json():
    from llmtailor.serve.app import _chunk, _Frames, _sse, _text_chunk

    for text in ['plain', 'quo"te\\ and \n newline', "ünï ✓ 😀", "\x00\x01", ""]:
        for chat in (True, False):
            frames = _Frames("chatcmpl-1", 123, 'm"odel', chat)
            want = (_chunk("chatcmpl-1", 123, 'm"odel', {"content": text}, None) if chat
                    else _text_chunk("chatcmpl-1", 123, 'm"odel', text, None))
            assert frames.delta(text).decode() == _sse(want)
