"""The shipped demo dataset (ticket triage): labels follow the rules, planned defects are present, generator is
deterministic."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest

DEMO = files("llmtailor") / "assets" / "demo"
GENERATOR = Path(__file__).resolve().parents[2] / "tools" / "make_demo_data.py"
TEAMS = {
    "billing": "finance",
    "technical": "engineering",
    "account": "customer-success",
    "shipping": "logistics",
    "security": "trust-and-safety",
}
ROLES = ("system", "user", "assistant")
LONG_CHARS = 2000  # normal tickets are < 700 characters; the planted long one is ~1100 tokens
PII = {
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "phone": re.compile(r"\+\d{1,3}(?: \d{2,4}){3}"),
    "card": re.compile(r"\b(?:\d{4} ){3}\d{4}\b"),
    "ip": re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"),
    "name": re.compile(r"My name is [A-Z][a-z]+ [A-Z][a-z]+"),
}


def _lines() -> list[str]:
    return (DEMO / "tickets.jsonl").read_text(encoding="utf-8").splitlines()


def _parsed() -> list[dict]:
    out = []
    for line in _lines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _is_valid_chat(row: dict) -> bool:
    msgs = row.get("messages")
    return (
        isinstance(msgs, list)
        and tuple(m.get("role") for m in msgs) == ROLES
        and all(isinstance(m.get("content"), str) and m["content"].strip() for m in msgs)
    )


def _examples() -> list[tuple[str, str, str]]:
    """(id, ticket, answer) of every structurally valid chat or Alpaca row."""
    out = []
    for row in _parsed():
        if _is_valid_chat(row):
            out.append((row["id"], row["messages"][1]["content"], row["messages"][2]["content"]))
        elif {"instruction", "input", "output"} <= row.keys():
            out.append((row["id"], row["input"], row["output"]))
    return out


def _schema() -> dict:
    return json.loads((DEMO / "ticket.schema.json").read_text(encoding="utf-8"))


def _subject(ticket: str) -> str:
    first, blank, _ = ticket.split("\n", 2)
    assert first.startswith("Subject: ") and blank == ""
    return first[len("Subject: ") :]


def test_row_count_in_planned_range():
    lines = _lines()
    assert 340 <= len(lines) <= 380
    assert all(line.strip() for line in lines)


def test_schema_is_valid_draft_2020_12():
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"category", "priority", "team", "summary"}
    assert "subject" in schema["description"] and "lower-cased" in schema["description"]


def test_answers_validate_and_follow_the_rules():
    validator = jsonschema.Draft202012Validator(_schema())
    invalid = []
    for row_id, ticket, answer in _examples():
        obj = json.loads(answer)
        if list(validator.iter_errors(obj)):
            invalid.append((row_id, obj))
            continue
        assert answer == json.dumps(obj), row_id  # compact, keys in order
        assert list(obj) == ["category", "priority", "team", "summary"], row_id
        assert obj["team"] == TEAMS[obj["category"]], row_id
        assert obj["summary"] == _subject(ticket).lower().rstrip(".,;:!? \t"), row_id
    # exactly one planted schema violation: a priority outside the enum
    assert len(invalid) == 1 and invalid[0][1]["priority"] == "critical"


def test_class_balance():
    validator = jsonschema.Draft202012Validator(_schema())
    answers = [json.loads(a) for _, _, a in _examples()]
    answers = [a for a in answers if validator.is_valid(a)]
    cats = Counter(a["category"] for a in answers)
    prios = Counter(a["priority"] for a in answers)
    assert set(cats) == set(TEAMS)
    for n in cats.values():
        assert 0.15 <= n / len(answers) <= 0.25
    assert set(prios) == {"low", "medium", "high", "urgent"}
    assert min(prios.values()) >= 0.1 * len(answers)


def test_ids_and_formats():
    rows = _parsed()
    assert all(re.fullmatch(r"t\d{4}", r["id"]) for r in rows)
    alpaca = [r for r in rows if "instruction" in r]
    assert 5 <= len(alpaca) <= 15
    valid_chat = [r for r in rows if _is_valid_chat(r)]
    assert len(valid_chat) >= 300
    assert len({r["messages"][0]["content"] for r in valid_chat}) == 1  # one fixed system prompt


def test_planted_structural_defects():
    lines = _lines()
    malformed = 0
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            malformed += 1
    assert malformed == 1
    rows = _parsed()
    no_format = [r for r in rows if "messages" not in r and "instruction" not in r]
    assert len(no_format) == 1
    chats = [r for r in rows if isinstance(r.get("messages"), list)]
    roles = [tuple(m["role"] for m in r["messages"]) for r in chats]
    assert any("bot" in rs for rs in roles)
    assert any(rs[-1] == "user" for rs in roles)
    assert any("system" in rs and rs[0] != "system" for rs in roles)
    assert any(any(m["content"] == "" for m in r["messages"]) for r in chats)
    long_rows = [r for r in chats if any(len(m["content"]) > LONG_CHARS for m in r["messages"])]
    assert len(long_rows) == 1 and _is_valid_chat(long_rows[0])


def test_planted_duplicates():
    lines = _lines()
    counts = Counter(lines)
    assert sum(n - 1 for n in counts.values()) == 12  # exact duplicates (byte-identical lines)

    def words(text: str) -> frozenset[str]:
        return frozenset(re.findall(r"[a-z0-9]+", text.lower()))

    tickets = sorted({t for _, t, _ in _examples()})
    sets = [words(t) for t in tickets]
    near = 0
    for i in range(len(tickets)):
        for j in range(i + 1, len(tickets)):
            inter = len(sets[i] & sets[j])
            if inter / len(sets[i] | sets[j]) >= 0.8:
                near += 1
                assert _subject(tickets[i]) == _subject(tickets[j])
    assert 10 <= near <= 14


def test_pii_only_in_ticket_text():
    examples = _examples()
    kinds = Counter()
    pii_rows = 0
    for _, ticket, answer in examples:
        found = {k for k, rx in PII.items() if rx.search(ticket)}
        kinds.update(found)
        pii_rows += bool(found)
        assert not any(rx.search(_subject(ticket)) for rx in PII.values())
        assert not any(rx.search(answer) for rx in PII.values())
    assert pii_rows >= 20
    assert set(kinds) == set(PII)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("name", ["tickets.jsonl", "ticket.schema.json"])
def test_generator_is_deterministic(regenerated, name):
    assert (regenerated / name).read_bytes() == (DEMO / name).read_bytes()
