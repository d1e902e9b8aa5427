"""Guardrails on requests and answers: personal data, prompt injection, denied topics, JSON answers.

Each check has an action per alias: `log` records the hit (metrics + request log), `redact` replaces
personal data with the data stage's placeholders (same Presidio setup as training, so the model sees
the same `<EMAIL>` tags it was trained on), `block` refuses with an OpenAI-style error.

Every input check runs even after one has decided to block, so all hits are recorded, and a refused text
comes back with its personal data redacted: the request log must not keep what the guard refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
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
    """The texts to pass on (redacted for `redact`; for `block`, the redacted texts to log), what was found,
    and the reason if the request must be refused (the first check that blocked)."""

    texts: list[str]
    hits: list[dict[str, Any]] = field(default_factory=list)
    blocked: str | None = None

    def hit(self, check: str, action: str, found: Any, reason: str) -> None:
        """Record a hit; a blocking action refuses (the first reason is kept)."""
        self.hits.append({"check": check, "action": action, "found": found})
        if action == "block" and self.blocked is None:
            self.blocked = reason


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
    """Check the caller's texts (every turn it sent; an alias's own system prompt is the operator's, not checked)."""
    v = Verdict(list(texts))
    joined = "\n".join(texts)
    if cfg.injection != "off" and (found := injection_hits(joined)):
        v.hit("injection", cfg.injection, found, "the request looks like a prompt-injection or jailbreak attempt")
    if cfg.deny_topics and (found := topic_hits(joined, cfg.deny_topics)):
        v.hit("deny_topic", cfg.deny_action, found, "the request is about a topic this assistant does not discuss")
    if cfg.input_pii != "off":
        _check_pii(v, "input_pii", cfg.input_pii, pii_cfg, "the request contains personal data")
    return v


def check_output(text: str, cfg: GuardrailConfig, pii_cfg: Any, schema: dict | None) -> Verdict:
    """Check a finished answer: personal data and, when asked, JSON validity against the schema."""
    v = Verdict([text])
    if cfg.output_pii != "off":
        _check_pii(v, "output_pii", cfg.output_pii, pii_cfg, "the answer contained personal data")
        if v.blocked:
            return v
    if cfg.output_json != "off" and (problem := json_problem(v.texts[0], schema)):
        v.hit("output_json", cfg.output_json, problem, f"the answer failed the JSON check ({problem})")
    return v


def _check_pii(v: Verdict, check: str, action: str, pii_cfg: Any, reason: str) -> None:
    """Presidio over the verdict's texts; `redact` and `block` keep the redacted texts (`log` keeps them as sent)."""
    redacted, counts = _pii(v.texts, pii_cfg)
    if not counts:
        return
    v.hit(check, action, counts, f"{reason} ({', '.join(sorted(counts))})")
    if action in ("redact", "block"):
        v.texts = redacted


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
    """The alias's `json_schema`, checked at startup: a bad schema must not turn every answer into a 500."""
    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TailorError(f"guardrails.json_schema: cannot read {path}: {e}") from e
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise TailorError(f"guardrails.json_schema: {path} is not a valid JSON Schema: {e.message}") from e
    return schema
