"""Guardrails on requests and answers: personal data, prompt injection, denied topics, JSON answers.

Each check has an action per alias: `log` records the hit (metrics + request log), `redact` replaces
personal data with the data stage's placeholders (same Presidio setup as training, so the model sees
the same `<EMAIL>` tags it was trained on), `block` refuses with an OpenAI-style error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.serve.config import GuardrailConfig

# Phrasings common to prompt-injection and jailbreak attempts (lower-cased text, whitespace collapsed).
INJECTION_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(p)) for name, p in [
        ("ignore-instructions", r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|"
                                r"your|the system)\b.{0,20}\b(instructions?|prompts?|rules|directions|guidelines)\b"),
        ("reveal-system-prompt", r"\b(reveal|show|print|repeat|tell me|output|leak)\b.{0,30}\b(system prompt|"
                                 r"hidden (prompt|instructions)|initial instructions|your instructions)\b"),
        ("roleplay-jailbreak", r"\b(you are now|act as|pretend (to be|you are)|from now on you)\b.{0,40}\b(dan|"
                               r"jailbr(oken|eak)|unfiltered|uncensored|no (restrictions|rules|limits)|evil)\b"),
        ("developer-mode", r"\b(developer|god|sudo|admin) mode\b"),
        ("do-anything-now", r"\bdo anything now\b"),
        ("no-restrictions", r"\bwithout (any )?(restrictions|filters|censorship|safety)\b"),
    ]
]


@dataclass
class Verdict:
    """The (possibly redacted) texts, what was found, and the reason if the request must be refused."""

    texts: list[str]
    hits: list[dict[str, Any]] = field(default_factory=list)
    blocked: str | None = None


def injection_hits(text: str) -> list[str]:
    norm = re.sub(r"\s+", " ", text.lower())
    return [name for name, pat in INJECTION_PATTERNS if pat.search(norm)]


def topic_hits(text: str, topics: list[str]) -> list[str]:
    low = text.lower()
    return [t for t in topics if re.search(r"(?<!\w)" + re.escape(t.lower()) + r"(?!\w)", low)]


def _pii(texts: list[str], pii_cfg: Any) -> tuple[list[str], dict[str, int]]:
    from llmtailor.data.redact import redact_texts

    out, counts = redact_texts(texts, pii_cfg)
    return out, dict(counts)


def check_input(texts: list[str], cfg: GuardrailConfig, pii_cfg: Any) -> Verdict:
    """Check the user-supplied texts of a request (system prompts from the alias are not checked)."""
    v = Verdict(list(texts))
    joined = "\n".join(texts)
    if cfg.injection != "off":
        found = injection_hits(joined)
        if found:
            v.hits.append({"check": "injection", "action": cfg.injection, "found": found})
            if cfg.injection == "block":
                v.blocked = "the request looks like a prompt-injection or jailbreak attempt"
                return v
    if cfg.deny_topics:
        found = topic_hits(joined, cfg.deny_topics)
        if found:
            v.hits.append({"check": "deny_topic", "action": cfg.deny_action, "found": found})
            if cfg.deny_action == "block":
                v.blocked = "the request is about a topic this assistant does not discuss"
                return v
    if cfg.input_pii != "off":
        redacted, counts = _pii(v.texts, pii_cfg)
        if counts:
            v.hits.append({"check": "input_pii", "action": cfg.input_pii, "found": counts})
            if cfg.input_pii == "block":
                v.blocked = "the request contains personal data (" + ", ".join(sorted(counts)) + ")"
                return v
            if cfg.input_pii == "redact":
                v.texts = redacted
    return v


def check_output(text: str, cfg: GuardrailConfig, pii_cfg: Any, schema: dict | None) -> Verdict:
    """Check a finished answer: personal data and, when asked, JSON validity against the schema."""
    v = Verdict([text])
    if cfg.output_pii != "off":
        redacted, counts = _pii([text], pii_cfg)
        if counts:
            v.hits.append({"check": "output_pii", "action": cfg.output_pii, "found": counts})
            if cfg.output_pii == "block":
                v.blocked = "the answer contained personal data and was withheld"
                return v
            if cfg.output_pii == "redact":
                v.texts = redacted
    if cfg.output_json != "off":
        problem = json_problem(v.texts[0], schema)
        if problem:
            v.hits.append({"check": "output_json", "action": cfg.output_json, "found": problem})
            if cfg.output_json == "block":
                v.blocked = f"the answer failed the JSON check ({problem})"
    return v


def json_problem(text: str, schema: dict | None) -> str | None:
    """None when text parses (and matches schema), else a short reason."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON: {e.msg}"
    if schema:
        import jsonschema

        try:
            jsonschema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            return f"schema: {e.message}"
    return None


def load_schema(path: Path | None) -> dict | None:
    if path is None:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))
