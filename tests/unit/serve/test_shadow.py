"""Shadow deployments through the real app: the shadow adapter answers a copy of each request on an alias following
production; its answer is logged beside the user's, never returned, never changes or delays the user's answer, does
not use the key's rate limit, and a broken shadow does not affect the user."""

from __future__ import annotations

import json
import shutil
import time

from llmtailor.registry.db import Registry
from llmtailor.registry.hooks import sync_run
from llmtailor.serve.metrics import parse
from tests.unit.serve.conftest import auth, make_run

MSG = [{"role": "user", "content": "The customer cannot log in"}]


def ask(client, model: str, key: str | None = None, **kw) -> dict:
    r = client.post("/v1/chat/completions", headers=auth(key or client.keys["acme"]),
                    json={"model": model, "messages": MSG, "max_tokens": 8, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def follow(client, adapter: str, shadow: str | None) -> None:
    """Wait until the server's deployment poller has seen this production state."""
    deadline = time.time() + 5
    while time.time() < deadline:
        dep = client.app_server.deployments.get("production")
        if dep is not None and (dep.adapter_id, dep.shadow_adapter_id) == (adapter, shadow):
            return
        time.sleep(0.05)
    raise AssertionError(f"server did not pick up {adapter} shadowed by {shadow}")


def settle(client) -> None:
    """Every started shadow answer finished and every log row written."""
    client.portal.call(client.app_server.shadows.drain)
    client.app_server.logger.flush()


def shadow_row(reg: Registry, rid: str) -> dict | None:
    pairs = [p for p in reg.shadow_pairs(stage=None) if p["user"]["id"] == rid]
    return pairs[0]["shadow"] if pairs else None


def test_shadow_answer_is_logged_never_returned_and_the_user_answer_is_unchanged(client):
    reg = Registry(client.app_server.cfg.registry.url)
    reg.promote("run-good", "production")
    follow(client, "ad-run-good", None)
    plain = ask(client, "live")
    shadow_says = ask(client, "ad-run-other")["choices"][0]["message"]["content"]
    reg.promote("run-other", "production", shadow=True)
    follow(client, "ad-run-good", "ad-run-other")
    try:
        body = ask(client, "live")
        assert body["choices"] == plain["choices"] and set(body) == set(plain)  # same answer, no extra fields
        assert body["choices"][0]["message"]["content"] != shadow_says
        stream = client.post("/v1/chat/completions", headers=auth(client.keys["acme"]),
                             json={"model": "live", "messages": MSG, "max_tokens": 8, "stream": True})
        assert shadow_says not in stream.text and "shadow" not in stream.text
        settle(client)
        logged = shadow_row(reg, body["id"])
        assert logged is not None and logged["status"] == 200 and logged["adapter_id"] == "ad-run-other"
        assert logged["answer"] == shadow_says and logged["stage"] == "production" and logged["latency_ms"] > 0
        assert logged["prompt"] == MSG[0]["content"]  # serve.log_content is on in this project
        user = [r for r in reg.requests() if r["id"] == body["id"]][0]
        assert user["adapter_id"] == "ad-run-good" and user["answer"] == body["choices"][0]["message"]["content"]
        assert all(r["shadow_of"] is None for r in reg.requests())
        stream_id = json.loads(stream.text.splitlines()[0].removeprefix("data: "))["id"]
        assert shadow_row(reg, stream_id)["answer"] == shadow_says
        # A model not following the deployment gets no shadow.
        direct = ask(client, "ad-run-good")
        settle(client)
        assert shadow_row(reg, direct["id"]) is None
        metrics = parse(client.get("/metrics", headers=auth(client.keys["acme"])).text)
        assert metrics['llmtailor_shadow_requests_total{adapter=ad-run-other,outcome=ok,stage=production}'] == 2
    finally:
        reg.rollback("production")
    follow(client, "ad-run-good", None)  # a rollback clears the shadow
    after = ask(client, "live")
    settle(client)
    assert shadow_row(reg, after["id"]) is None


def test_shadow_copies_do_not_use_the_rate_limit_and_a_broken_shadow_does_not_affect_users(client, tmp_path):
    reg = Registry(client.app_server.cfg.registry.url)
    broken = make_run(tmp_path / "runs", "run-shadow-broken", 21, True)
    sync_run(reg, broken)
    reg.promote("run-good", "production")
    follow(client, "ad-run-good", None)
    plain = ask(client, "live")["choices"]
    reg.promote("run-shadow-broken", "production", shadow=True)
    shutil.rmtree(broken / "adapter")  # the shadow's weights vanish after promotion
    follow(client, "ad-run-good", "ad-run-shadow-broken")
    try:
        ids = [ask(client, "live", client.keys["slow"]) for _ in range(3)]  # the key allows 3 requests a minute
        assert all(b["choices"] == plain for b in ids)
        settle(client)
        assert client.post("/v1/chat/completions", headers=auth(client.keys["slow"]),
                           json={"model": "live", "messages": MSG, "max_tokens": 2}).status_code == 429
        for b in ids:
            logged = shadow_row(reg, b["id"])
            assert logged["status"] == 500 and logged["answer"] is None
        metrics = parse(client.get("/metrics", headers=auth(client.keys["acme"])).text)
        key = 'llmtailor_shadow_requests_total{adapter=ad-run-shadow-broken,outcome=error,stage=production}'
        assert metrics[key] == 3
    finally:
        reg.rollback("production")
    follow(client, "ad-run-good", None)
