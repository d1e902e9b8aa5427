"""Preference pairs: read and validate `{prompt, chosen, rejected}` JSONL, render it with the SFT chat template.

A pair whose chosen and rejected answers are the same teaches nothing and a missing field would crash the trainer
minutes in, so every row is checked up front and problems are reported as `file:line: field: problem`, like chat rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.chat import render_conversation, render_prompt
from llmtailor.errors import RowError, TailorError
from llmtailor.io import read_jsonl_lenient

ROLES = ("system", "user", "assistant")


@dataclass
class PreferenceRow:
    """One validated pair: the prompt as chat turns, the two answers as plain text."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    line: int = 0


@dataclass
class PreferenceReport:
    """Rows that passed, and every problem found (all of them, not only the first)."""

    rows: list[PreferenceRow] = field(default_factory=list)
    problems: list[RowError] = field(default_factory=list)
    total: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"rows_total": self.total, "rows_ok": len(self.rows), "rows_bad": self.total - len(self.rows),
                "errors": [p.as_dict() for p in self.problems]}


def _messages(value: Any, file: str, line: int, name: str) -> list[dict[str, str]] | RowError:
    if not isinstance(value, list) or not value:
        return RowError(file, line, name, "expected a non-empty string or a non-empty list of {role, content} turns")
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            return RowError(file, line, where, f"expected an object with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return RowError(file, line, f"{where}.role", f"must be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str) or not content.strip():
            return RowError(file, line, f"{where}.content", "empty or not a string")
        out.append({"role": role, "content": content})
    return out


def _prompt(value: Any, file: str, line: int) -> list[dict[str, str]] | RowError:
    if isinstance(value, str):
        if not value.strip():
            return RowError(file, line, "prompt", "empty string")
        return [{"role": "user", "content": value}]
    msgs = _messages(value, file, line, "prompt")
    if isinstance(msgs, RowError):
        return msgs
    if msgs[-1]["role"] != "user":
        return RowError(file, line, "prompt", f"the last turn must be the user's (got {msgs[-1]['role']!r})")
    return msgs


def _answer(value: Any, file: str, line: int, name: str) -> str | RowError:
    if isinstance(value, str):
        return value if value.strip() else RowError(file, line, name, "empty string")
    if isinstance(value, dict):
        value = [value]
    msgs = _messages(value, file, line, name)
    if isinstance(msgs, RowError):
        return msgs
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        return RowError(file, line, name, "expected a string or one assistant turn")
    return msgs[0]["content"]


def check_row(obj: dict[str, Any], file: str, line: int) -> PreferenceRow | RowError:
    """One row checked: fields present, non-empty, well-formed, and two different answers."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in obj:
            return RowError(file, line, key, "missing (a preference row needs prompt, chosen and rejected)")
    prompt = _prompt(obj["prompt"], file, line)
    if isinstance(prompt, RowError):
        return prompt
    chosen = _answer(obj["chosen"], file, line, "chosen")
    if isinstance(chosen, RowError):
        return chosen
    rejected = _answer(obj["rejected"], file, line, "rejected")
    if isinstance(rejected, RowError):
        return rejected
    if chosen.strip() == rejected.strip():
        return RowError(file, line, "rejected", "same text as chosen: the pair expresses no preference")
    return PreferenceRow(prompt, chosen, rejected, line)


def validate_preferences(path: str | Path, system_prompt: str | None = None) -> PreferenceReport:
    """Every row of a preference file checked; `system_prompt` is added to prompts without a system turn, as
    `data.system_prompt` is for SFT rows, so both objectives train on the same context."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise TailorError(f"{path}: preference file not found (build one with `tailor data preferences`)")
    report = PreferenceReport()
    for line, obj, problem in read_jsonl_lenient(path):
        report.total += 1
        if problem is not None or obj is None:
            report.problems.append(RowError(path, line, None, problem or "unreadable line"))
            continue
        row = check_row(obj, str(path), line)
        if isinstance(row, RowError):
            report.problems.append(row)
            continue
        if system_prompt and row.prompt[0]["role"] != "system":
            row.prompt.insert(0, {"role": "system", "content": system_prompt})
        report.rows.append(row)
    return report


def load_preferences(path: str | Path, system_prompt: str | None = None) -> list[PreferenceRow]:
    """Validated rows; the first problem is raised (with the count of the others), nothing is silently dropped."""
    report = validate_preferences(path, system_prompt)
    if report.problems:
        first = report.problems[0]
        more = len(report.problems) - 1
        if more:
            raise RowError(first.file, first.line, first.field,
                           f"{first.problem} (and {more} more bad row(s); `tailor data check-preferences FILE` "
                           "lists them all)")
        raise first
    if not report.rows:
        raise TailorError(f"{path}: no preference rows")
    return report.rows


def render_pair(tokenizer: Any, row: PreferenceRow) -> dict[str, str]:
    """Prompt and answers as text, through the renderer SFT and generation use: the answer is exactly what the chat
    template puts after the generation prompt (end-of-turn token included, trailing newline not)."""
    prompt = render_prompt(tokenizer, row.prompt)
    out = {"prompt": prompt}
    for key in ("chosen", "rejected"):
        full = render_conversation(tokenizer, [*row.prompt, {"role": "assistant", "content": getattr(row, key)}])
        if not full.startswith(prompt):
            raise TailorError("the chat template does not render the prompt as a prefix of the conversation; "
                              "preference tuning needs a prefix-consistent template")
        out[key] = full[len(prompt):].rstrip("\n")
    return out
