"""Metrics on hand-made cases: JSON-aware exact match, chatter, schemas, skipped references."""

from __future__ import annotations

import json
import math

import pytest

from llmtailor.errors import RowError, TailorError
from llmtailor.eval.metrics import (
    bleu_corpus,
    exact_match,
    field_accuracy,
    json_compliance,
    load_schema,
    normalize_text,
    parse_json_output,
    rouge_l,
    score_examples,
    token_f1,
)

ALL = ["loss", "exact_match", "token_f1", "rouge_l", "bleu", "json_compliance", "field_accuracy"]
SCHEMA = {
    "type": "object",
    "properties": {"category": {"enum": ["billing", "tech"]}, "priority": {"enum": ["low", "high"]}},
    "required": ["category", "priority"],
    "additionalProperties": False,
}


def test_normalize_text():
    assert normalize_text("  Hello,\n  World!  ") == "hello, world"
    assert normalize_text("«Résumé.»") == "résumé"
    assert normalize_text(None) == ""


def test_exact_match_text_and_json():
    assert exact_match("Paris.", "  paris") == 1.0
    assert exact_match("Paris", "London") == 0.0
    # key order and whitespace inside string values are ignored for JSON objects
    assert exact_match('{"b": "x  y", "a": 1}', '{"a":1,"b":"x y"}') == 1.0
    assert exact_match('{"a": 1}', '{"a": 2}') == 0.0
    # chatter makes it not an exact match (compliance reports it separately)
    assert exact_match('Sure! {"a": 1}', '{"a": 1}') == 0.0


def test_token_f1_rouge_bleu():
    assert token_f1("the cat sat", "a cat sat") == 1.0  # articles dropped
    assert token_f1("cat", "dog") == 0.0
    assert math.isclose(token_f1("red cat", "red dog"), 0.5)
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert 0 < rouge_l("the cat sat", "the cat sat on the mat") < 1
    assert rouge_l("Größe", "größe") == pytest.approx(1.0)  # non-ASCII words count
    assert bleu_corpus(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert bleu_corpus([], []) == 0.0


def test_parse_json_output_chatter_is_noted():
    assert parse_json_output('{"a": 1}') == ({"a": 1}, None)
    obj, note = parse_json_output('Here you go:\n```json\n{"a": {"b": "}"}}\n```\nHope it helps')
    assert obj == {"a": {"b": "}"}}
    assert note and "extra text" in note
    obj, err = parse_json_output("no json here")
    assert obj is None and "no JSON object" in err
    assert parse_json_output("")[0] is None


def test_json_compliance():
    ok = json_compliance('{"category": "billing", "priority": "low"}', SCHEMA)
    assert ok == {"parses": True, "valid": True, "error": None, "extra_text": False}
    chatter = json_compliance('Answer: {"category": "tech", "priority": "high"} done', SCHEMA)
    assert chatter["parses"] and chatter["valid"] and chatter["extra_text"]
    bad = json_compliance('{"category": "sales", "priority": "low"}', SCHEMA)
    assert bad["parses"] and not bad["valid"] and "category" in bad["error"]
    missing = json_compliance('{"category": "tech"}', SCHEMA)
    assert not missing["valid"] and "priority" in missing["error"]
    broken = json_compliance('{"category": ', SCHEMA)
    assert broken["parses"] is False and broken["valid"] is False
    with pytest.raises(TailorError, match="invalid JSON Schema"):
        json_compliance("{}", {"type": "no-such-type"})


def test_field_accuracy():
    ref = {"category": "billing", "priority": "high"}
    assert field_accuracy({"priority": "high", "category": "tech"}, ref) == {"category": 0, "priority": 1}
    assert field_accuracy(None, ref) == {"category": 0, "priority": 0}


def test_score_examples_aggregate_and_skips():
    preds = [
        '{"priority": "high", "category": "billing"}',
        'Sure: {"category": "tech", "priority": "low"}',
        "not json at all",
        '{"category": "tech", "priority": "high"}',
    ]
    refs = [
        '{"category": "billing", "priority": "high"}',
        '{"category": "tech", "priority": "high"}',
        '{"category": "billing", "priority": "low"}',
        "",  # missing reference
    ]
    agg, rows = score_examples(preds, refs, SCHEMA, ALL)
    assert agg["n"] == 4
    assert agg["exact_match"] == pytest.approx(1 / 3)
    assert agg["json_parse_rate"] == pytest.approx(3 / 4)  # schema given: every row, reference or not
    assert agg["json_compliance"] == pytest.approx(3 / 4)
    assert agg["json_extra_text_rate"] == pytest.approx(1 / 4)
    assert agg["field_accuracy"] == {"category": pytest.approx(2 / 3), "priority": pytest.approx(1 / 3)}
    assert agg["skipped"] == {"exact_match": 1, "token_f1": 1, "rouge_l": 1, "bleu": 1, "field_accuracy": 1}
    assert agg["answer_length_tokens"] == pytest.approx((4 + 5 + 4 + 4) / 4)
    assert "exact_match" not in rows[3] and rows[3]["json_valid"] is True
    assert rows[1]["json_extra_text"] is True and rows[2]["json_parses"] is False
    for v in agg.values():
        assert not (isinstance(v, float) and math.isnan(v))
    json.dumps(agg), json.dumps(rows)  # serialisable


def test_score_examples_text_only_and_all_skipped():
    agg, _ = score_examples(["Paris", "4"], ["paris", None], None, ["exact_match", "bleu", "json_compliance"])
    assert agg["exact_match"] == 1.0 and agg["skipped"] == {"exact_match": 1, "bleu": 1}
    assert agg["json_compliance"] is None  # no schema and no JSON references: nothing to check
    agg, _ = score_examples(["x"], [None], None, ["exact_match"])
    assert agg["exact_match"] is None and agg["skipped"] == {"exact_match": 1}


def test_score_examples_errors():
    with pytest.raises(TailorError, match="empty eval set"):
        score_examples([], [], None, ALL)
    with pytest.raises(TailorError, match="2 predictions but 1"):
        score_examples(["a", "b"], ["a"], None, ALL)


def test_load_schema(tmp_path):
    good = tmp_path / "schema.json"
    good.write_text(json.dumps(SCHEMA))
    assert load_schema(good) == SCHEMA
    with pytest.raises(TailorError, match="not found"):
        load_schema(tmp_path / "missing.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{\n  "type": "object",\n  oops\n}')
    with pytest.raises(RowError) as e:
        load_schema(bad_json)
    assert str(bad_json) in str(e.value) and e.value.line == 3
    invalid = tmp_path / "invalid_schema.json"
    invalid.write_text(json.dumps({"type": "object", "properties": {"a": {"type": 12}}}))
    with pytest.raises(TailorError, match="invalid_schema.json: invalid JSON Schema"):
        load_schema(invalid)
