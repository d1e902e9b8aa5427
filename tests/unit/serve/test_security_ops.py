"""Security review (issue 12), finding 9, tested through HTTP as another tenant or an anonymous client:
/metrics is the operator's, /health tells strangers only that the server is up, a 500 does not echo exception
text, and citations do not reveal where documents live on the server."""

from __future__ import annotations

import logging

import pytest

from llmtailor.registry.db import Registry
from tests.unit.serve.conftest import auth, build_engine


@pytest.fixture(scope="module")
def keys(project) -> dict[str, str]:
    """Keys beyond the project's: another tenant with '*', and a narrow key of the operator's tenant."""
    reg = Registry(project["cfg"].registry.url)
    try:
        return {"initech": reg.create_key("initech", [], ["*"])[1],
                "acme-narrow": reg.create_key("acme", [], ["tiny"])[1]}
    finally:
        reg.close()


def app_client(project, raise_server_exceptions: bool = True, **serve):
    from fastapi.testclient import TestClient

    from llmtailor.serve.app import create_app

    cfg = project["cfg"]
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update=serve)})
    reg = Registry(cfg.registry.url)
    c = TestClient(create_app(cfg, engine=build_engine(), registry=reg),
                   raise_server_exceptions=raise_server_exceptions)
    c.reg = reg
    return c


def test_metrics_needs_an_operator_key(client, project, keys):
    text = client.get("/metrics", headers=auth(project["keys"]["acme"]))  # tenant 'acme' = project, models '*'
    assert text.status_code == 200 and "llmtailor_requests_total" in text.text
    for who in (project["keys"]["globex"], keys["initech"], keys["acme-narrow"]):
        r = client.get("/metrics", headers=auth(who))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "permission_denied"
        assert "acme-only" not in r.text and "llmtailor_" not in r.text
    assert client.get("/metrics").status_code == 401


def test_metrics_tenants_setting_names_who_may_read_metrics(project, keys):
    with app_client(project, metrics_tenants=["initech"]) as c:
        assert c.get("/metrics", headers=auth(keys["initech"])).status_code == 200
        assert c.get("/metrics", headers=auth(project["keys"]["acme"])).status_code == 403
    c.reg.close()


def test_health_without_a_key_says_only_ok(client, project, keys):
    client.post("/v1/chat/completions", headers=auth(project["keys"]["acme"]),
                json={"model": "ad-run-good", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/health", headers=auth("tlr-wrong")).json() == {"status": "ok"}
    assert client.get("/health", headers=auth(keys["initech"])).json() == {"status": "ok"}
    full = client.get("/health", headers=auth(project["keys"]["acme"])).json()
    assert full["status"] == "ok" and "ad-run-good" in full["loaded_adapters"] and "deployments" in full


def test_500_answers_a_request_id_and_logs_the_detail(project, caplog):
    with app_client(project, raise_server_exceptions=False) as c:
        server = c.app.state.server

        def boom(req):
            raise RuntimeError("disk /srv/secret/weights.bin unreadable")

        server.engine.stream = boom
        with caplog.at_level(logging.ERROR, logger="llmtailor.serve"):
            r = c.post("/v1/chat/completions", headers=auth(project["keys"]["acme"]),
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert r.status_code == 500
        err = r.json()["error"]
        assert "secret" not in r.text and "RuntimeError" not in r.text
        assert err["type"] == "server_error" and r.headers["x-request-id"] in err["message"]
        assert any(r.headers["x-request-id"] in rec.getMessage() and "/srv/secret" in rec.getMessage()
                   + str(rec.exc_info) for rec in caplog.records)
    c.reg.close()


def test_generation_errors_do_not_echo_exception_text(project, caplog):
    from llmtailor.serve.engine import Event

    async def failing(req):
        yield Event("error", error=RuntimeError("CUDA at /srv/secret/lib.so"))

    with app_client(project) as c:
        c.app.state.server.engine.stream = failing
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        with caplog.at_level(logging.ERROR, logger="llmtailor.serve"):
            r = c.post("/v1/chat/completions", headers=auth(project["keys"]["acme"]), json=body)
            s = c.post("/v1/chat/completions", headers=auth(project["keys"]["acme"]), json={**body, "stream": True})
        assert r.status_code == 500 and "secret" not in r.text and "chatcmpl-" in r.json()["error"]["message"]
        assert "server_error" in s.text and "secret" not in s.text
        assert sum("/srv/secret" in rec.getMessage() for rec in caplog.records) == 2
    c.reg.close()


def test_citations_do_not_reveal_server_paths(project, tmp_path):
    from fastapi.testclient import TestClient

    from llmtailor.rag.ingest import ingest
    from llmtailor.rag.meta import DocMeta
    from llmtailor.serve.app import create_app
    from llmtailor.serve.config import AliasConfig

    docs = tmp_path / "srv-private" / "hr"
    docs.mkdir(parents=True)
    (docs / "refunds.md").write_text("# Refunds\n\nRefunds are paid within 14 days of the request.\n")
    cfg = project["cfg"]
    ingest([docs], tmp_path / "index", cfg.rag, defaults=DocMeta(tenant="acme"))
    aliases = {**cfg.serve.aliases, "docs-bot": AliasConfig(index=tmp_path / "index", top_k=1)}
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"aliases": aliases})})
    reg = Registry(cfg.registry.url)
    with TestClient(create_app(cfg, engine=build_engine(), registry=reg)) as c:
        r = c.post("/v1/chat/completions", headers=auth(project["keys"]["acme"]),
                   json={"model": "docs-bot", "max_tokens": 4,
                         "messages": [{"role": "user", "content": "How long do refunds take?"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [p["source"] for p in body["passages"]] == ["refunds.md"]
        assert str(tmp_path) not in r.text and "srv-private" not in r.text
    reg.close()
