"""A training row in one shape: chat messages plus the row's other keys, whatever format it was read from."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
ALPACA_KEYS = ("instruction", "input", "output")


@dataclass
class Row:
    """A valid row: `messages` as plain {role, content} dicts, `extra` = other top-level keys (id, meta, ...)."""

    messages: list[dict[str, str]]
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    file: str = ""
    line: int = 0
    converted: bool = False  # read as Alpaca
    system_added: bool = False  # got the configured system prompt
    tokens: int = 0  # rendered length, once measured

    def to_json(self) -> dict[str, Any]:
        """The row as written to train.jsonl / eval.jsonl."""
        return {"messages": [dict(m) for m in self.messages], **self.extra}


def detect_format(obj: dict[str, Any]) -> str:
    """'chat' when the row has messages, 'alpaca' when it has instruction/output keys, else 'chat' (to report)."""
    if "messages" in obj:
        return "chat"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    return "chat"


def alpaca_to_messages(obj: dict[str, Any]) -> list[dict[str, str]]:
    """user = instruction (+ blank line + input when given), assistant = output."""
    user = obj["instruction"]
    if obj.get("input"):
        user = f"{user}\n\n{obj['input']}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> tuple[list[dict[str, str]], bool]:
    """Prepend the configured system turn when the row has none; returns (messages, added)."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages, False
    return [{"role": "system", "content": system_prompt}, *messages], True


_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Lower-case, whitespace-collapsed text: formatting differences don't make rows distinct."""
    return _SPACE.sub(" ", text).strip().lower()


def exact_key(messages: list[dict[str, str]]) -> str:
    """Digest of the normalised conversation, roles included."""
    text = "\n".join(f"{m['role']}: {normalise(m['content'])}" for m in messages)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def words(messages: list[dict[str, str]]) -> list[str]:
    """Lower-cased words of the user and assistant turns, with role markers between turns."""
    out: list[str] = []
    for m in messages:
        if m["role"] == "system":
            continue
        out.append(f"__{m['role']}__")
        out.extend(_WORD.findall(m["content"].lower()))
    return out


def system_text(messages: list[dict[str, str]]) -> str:
    """Normalised system turn ('' when none)."""
    return normalise(messages[0]["content"]) if messages and messages[0]["role"] == "system" else ""
