"""Structured output on a tiny random model: whatever the (random) model prefers, the answer parses and matches
the schema, through the engine (batched, sampled, short budgets) and through the HTTP API (streaming too)."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from llmtailor.serve.engine import GenRequest
from llmtailor.serve.structured import ResponseFormat, ResponseFormatError, parse_response_format, validate
from tests.unit.serve.conftest import auth, build_engine

TICKET = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "login", "outage"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 4},
        "summary": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "urgent": {"type": "boolean"},
    },
    "required": ["category", "priority", "summary", "tags"],
    "additionalProperties": False,
}
SMALL = {"type": "object", "properties": {"category": {"type": "string", "enum": ["billing", "login"]},
                                          "note": {"type": "string", "maxLength": 12}},
         "required": ["category", "note"], "additionalProperties": False}
PROMPTS = ["refund my invoice", "cannot log in", "portal down since noon", "add a user", "hello world 42"]


@pytest.fixture(scope="module")
def engine():
    e = build_engine(max_batch_size=8, batch_wait_ms=30).start()
    yield e
    e.stop()


def _ids(engine, text: str) -> list[int]:
    return engine.tokenizer(text)["input_ids"]


def test_random_model_answers_are_not_json_without_the_grammar(engine):
    # The point of the other tests: unconstrained, this model does not write JSON.
    outs = [engine.complete(GenRequest(_ids(engine, p), 30))[0] for p in PROMPTS[:3]]
    assert all(validate(o, ResponseFormat("json_object")) is not None for o in outs)


def test_schema_answers_always_validate_greedy_sampled_and_batched(engine):
    so = engine.structured()
    fmt = ResponseFormat("json_schema", TICKET)
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def go(prompt: str, temperature: float, budget: int) -> None:
        req = GenRequest(_ids(engine, prompt), budget, temperature=temperature, constraint=so.constraint(fmt, budget))
        text, ev = engine.complete(req)
        with lock:
            results.append((text, ev.finish_reason))

    jobs = [(p, t, b) for p in PROMPTS[:2] for t, b in ((0.0, 80), (1.0, 110))]
    threads = [threading.Thread(target=go, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(jobs)
    for text, reason in results:
        jsonschema.validate(json.loads(text), TICKET)
        assert reason == "stop"
    assert len({t for t, _ in results}) > 2  # the model still chooses: answers differ


def test_short_budgets_still_close_the_document(engine):
    """A sampled random model wanders into long strings and nesting; the budget-aware closer still ends it."""
    so = engine.structured()
    fmt = ResponseFormat("json_object")
    for budget in (4, 9, 16, 33):
        for i in range(3):
            req = GenRequest(_ids(engine, f"{PROMPTS[i]} {budget}"), budget, temperature=1.3,
                             constraint=so.constraint(fmt, budget))
            text, ev = engine.complete(req)
            assert isinstance(json.loads(text), dict), text
            assert ev.completion_tokens <= budget


def test_parse_response_format_errors():
    assert parse_response_format(None) is None and parse_response_format({"type": "text"}) is None
    assert parse_response_format({"type": "json_object"}).kind == "json_object"
    fmt = parse_response_format({"type": "json_schema", "json_schema": {"name": "t", "schema": TICKET}})
    assert fmt.schema == TICKET and fmt.name == "t"
    for bad in ({"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": 3}},
                {"type": "json_schema", "json_schema": {"schema": {"type": "no-such-type"}}}, "json"):
        with pytest.raises(ResponseFormatError):
            parse_response_format(bad)


def test_api_enforces_response_format_streaming_included(client):
    key = client.keys["acme"]
    rf = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": SMALL, "strict": True}}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "classify: refund"}], "max_tokens": 64,
            "response_format": rf}
    r = client.post("/v1/chat/completions", headers=auth(key), json=body)
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), SMALL)
    # Streaming: the deltas join into a valid document; an adapter's answer too.
    s = client.post("/v1/chat/completions", headers=auth(key),
                    json={**body, "model": "ad-run-good", "stream": True, "temperature": 1.0})
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in s.text.splitlines() if line.startswith("data: {"))
    jsonschema.validate(json.loads(text), SMALL)
    r = client.post("/v1/chat/completions", headers=auth(key),
                    json={**body, "response_format": {"type": "json_object"}, "max_tokens": 20})
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize(("patch", "fragment"), [
    ({"response_format": {"type": "yaml"}}, "Unsupported response_format"),
    ({"max_tokens": 5}, "too small"),
    ({"stop": ["}"]}, "cannot be combined"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}, "not a valid JSON Schema"),
])
def test_api_rejects_bad_response_formats(client, patch, fragment):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 64,
            "response_format": {"type": "json_schema", "json_schema": {"schema": SMALL}}, **patch}
    r = client.post("/v1/chat/completions", headers=auth(client.keys["acme"]), json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["param"] in ("response_format", "stop")
