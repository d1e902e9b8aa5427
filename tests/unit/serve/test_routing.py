"""Routing aliases through the real app: each rule type, the classifier, the default, chained routes, keys and
tenants, the response's `routed_to`, the request log and the decision counter; and config validation errors."""

from __future__ import annotations

import json

import pytest

from llmtailor.config import TailorConfig, parse_config
from llmtailor.errors import ConfigError
from llmtailor.registry.db import Registry
from llmtailor.serve.app import create_app
from llmtailor.serve.metrics import parse
from tests.unit.serve.conftest import auth, build_engine

ROUTES = {
    "small": {"adapter": "run-good"},
    "big": {"adapter": "run-other"},
    "assistant": {"route": {
        "rules": [
            {"to": "big", "contains_any": ["Contract", "LEGAL"]},
            {"to": "tiny", "response_format": "json"},
            {"to": "big", "min_prompt_tokens": 150},
            {"to": "tiny", "regex": r"^ticket #\d+", "max_prompt_tokens": 100},
        ],
        "classifier": {"examples": {"big": ["draft a detailed migration plan for the database cluster"],
                                    "small": ["reset my password please"]},
                       "min_similarity": 0.5},
        "default": "small",
    }},
    "front": {"route": {"rules": [{"to": "assistant", "contains_any": ["hop"]}], "default": "acme"}},
    "acme-router": {"tenants": ["acme"], "route": {"rules": [{"to": "acme-only", "contains_any": ["x"]}],
                                                   "default": "small"}},
}


@pytest.fixture()
def routed(project):
    """The project's app with routing aliases added, and a key that may call only `assistant` and `acme-router`."""
    from fastapi.testclient import TestClient

    raw = json.loads(project["cfg"].model_dump_json())
    raw["serve"]["aliases"].update(ROUTES)
    cfg = TailorConfig.model_validate(raw)
    reg = Registry(cfg.registry.url)
    narrow = reg.create_key("globex", [], ["assistant", "acme-router"])[1]
    app = create_app(cfg, engine=build_engine(max_batch_size=8, batch_wait_ms=5), registry=reg)
    with TestClient(app) as c:
        c.keys = {**project["keys"], "narrow": narrow}
        c.app_server = app.state.server
        c.reg = reg
        yield c
    reg.close()


def ask(client, text: str, model: str = "assistant", key: str = "acme", **kw):
    return client.post("/v1/chat/completions", headers=auth(client.keys[key]),
                       json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 6, **kw})


def routed_to(client, text: str, **kw) -> str:
    r = ask(client, text, **kw)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == kw.get("model", "assistant")
    return r.json()["routed_to"]


def test_each_rule_type_the_classifier_and_the_default(routed):
    assert routed_to(routed, "Please review this contract") == "big"  # contains_any, case-insensitive
    assert routed_to(routed, "hello", response_format={"type": "json_object"}) == "tiny"  # JSON requested
    assert routed_to(routed, "word " * 60) == "big"  # min_prompt_tokens
    assert routed_to(routed, "ticket #123 is stuck") == "tiny"  # regex and max_prompt_tokens
    assert routed_to(routed, "ticket #123 " + "again " * 60) == "big"  # too long for rule 4; rule 3 matches
    assert routed_to(routed, "draft a detailed migration plan") == "big"  # classifier
    assert routed_to(routed, "reset my password") == "small"  # classifier
    assert routed_to(routed, "zebra quantum lemonade") == "small"  # not similar enough: default
    assert routed_to(routed, "hop over", model="front") == "small"  # front -> assistant -> small
    metrics = parse(routed.get("/metrics", headers=auth(routed.keys["acme"])).text)
    decisions = {k: v for k, v in metrics.items() if k.startswith("llmtailor_route_decisions_total")}
    assert decisions == {
        "llmtailor_route_decisions_total{alias=assistant,reason=rule-1,target=big}": 1,
        "llmtailor_route_decisions_total{alias=assistant,reason=rule-2,target=tiny}": 1,
        "llmtailor_route_decisions_total{alias=assistant,reason=rule-3,target=big}": 2,
        "llmtailor_route_decisions_total{alias=assistant,reason=rule-4,target=tiny}": 1,
        "llmtailor_route_decisions_total{alias=assistant,reason=classifier,target=big}": 1,
        "llmtailor_route_decisions_total{alias=assistant,reason=classifier,target=small}": 1,
        "llmtailor_route_decisions_total{alias=assistant,reason=default,target=small}": 2,
        "llmtailor_route_decisions_total{alias=front,reason=rule-1,target=assistant}": 1,
    }


def test_routed_answer_is_the_targets_and_is_logged_under_the_alias(routed):
    r = ask(routed, "Legal question about the contract")
    direct = ask(routed, "Legal question about the contract", model="big")
    assert r.json()["choices"][0]["message"] == direct.json()["choices"][0]["message"]
    assert "routed_to" not in direct.json()
    s = ask(routed, "Legal question about the contract", stream=True)
    events = [json.loads(line[6:]) for line in s.text.splitlines() if line.startswith("data: {")]
    assert {e["model"] for e in events} == {"assistant"} and events[-1]["routed_to"] == "big"
    routed.app_server.logger.flush()
    row = [x for x in routed.reg.requests() if x["id"] == r.json()["id"]][0]
    assert (row["model"], row["routed_to"], row["adapter_id"]) == ("assistant", "big", "ad-run-other")


def test_keys_need_the_routing_alias_not_its_targets(routed):
    assert ask(routed, "the contract", key="narrow").status_code == 200  # big is used on the key's behalf
    assert ask(routed, "the contract", model="big", key="narrow").status_code == 404
    assert ask(routed, "hi", model="front", key="narrow").status_code == 404  # not in its models
    assert ask(routed, "hi", model="acme-router", key="narrow").status_code == 404  # alias tenants: acme only
    assert ask(routed, "x", model="acme-router", key="acme").json()["routed_to"] == "acme-only"


def _config_error(tmp_path, aliases: dict) -> str:
    text = json.dumps({"project": "acme", "serve": {"base_name": "tiny", "aliases": aliases}})
    with pytest.raises(ConfigError) as e:
        parse_config(text, tmp_path / "tailor.yaml")
    return str(e.value)


def test_config_errors_name_the_alias(tmp_path):
    cycle = {"a": {"route": {"rules": [{"to": "b", "contains_any": ["x"]}], "default": "tiny"}},
             "b": {"route": {"default": "a"}}}
    assert "routing cycle a -> b -> a" in _config_error(tmp_path, cycle)
    unknown = _config_error(tmp_path, {"a": {"route": {"default": "nope"}}})
    assert "alias 'a': route target 'nope' is not an alias or a served model name" in unknown
    both = _config_error(tmp_path, {"a": {"adapter": "r1", "index": "ix", "route": {"default": "tiny"}}})
    assert "alias 'a' routes requests (route:), so it cannot also set adapter, index" in both
    wider = {"acme-rag": {"tenants": ["acme"]}, "a": {"route": {"default": "acme-rag"}}}
    assert "alias 'a' routes to 'acme-rag', which only tenants acme may use" in _config_error(tmp_path, wider)
    assert "has no condition" in _config_error(tmp_path, {"a": {"route": {"rules": [{"to": "tiny"}],
                                                                        "default": "tiny"}}})
    assert "invalid regex" in _config_error(tmp_path, {"a": {"route": {"rules": [{"to": "tiny", "regex": "("}],
                                                                     "default": "tiny"}}})
    assert "unknown key 'rule'" in _config_error(tmp_path, {"a": {"route": {"rule": [], "default": "tiny"}}})
    ok = parse_config(json.dumps({"project": "acme", "serve": {"base_name": "tiny", "aliases": {
        "a": {"route": {"rules": [{"to": "acme:staging", "min_prompt_tokens": 9}], "default": "acme"}}}}}),
        tmp_path / "tailor.yaml")
    assert ok.serve.aliases["a"].route.targets() == ["acme:staging", "acme"]
