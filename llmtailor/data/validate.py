"""Row validation: every problem of every row, each located as `file:line: field: problem`.

Collecting all problems (instead of stopping at the first) lets a user fix a file in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.chat import tokenize_for_training
from llmtailor.data.rows import ALPACA_KEYS, ROLES, Row, alpaca_to_messages, detect_format, with_system_prompt
from llmtailor.errors import RowError, TailorError
from llmtailor.io import read_jsonl_rows

DEFAULT_MAX_SEQ_LEN = 512


class RowProblem(RowError):
    """A RowError that also carries a short `kind` (e.g. 'bad_role'), used to count drops by reason."""

    def __init__(self, file: str | Path | None, line: int | None, field: str | None, problem: str, kind: str):
        super().__init__(file, line, field, problem)
        self.kind = kind


@dataclass
class RawRow:
    """One non-blank line as read: the parsed object, or why it could not be parsed."""

    line: int
    obj: dict[str, Any] | None
    error: str | None = None
    where: str | None = None  # the field the error is in, when the line parsed as an object


@dataclass
class ValidationReport:
    """Outcome of validating one file."""

    file: str
    rows_total: int
    rows_ok: int
    errors: list[RowError] = field(default_factory=list)

    @property
    def rows_bad(self) -> int:
        return self.rows_total - self.rows_ok

    def as_dict(self) -> dict[str, Any]:
        """The `--json` shape: {file, rows, ok, errors: [{file, line, field, problem}]}."""
        return {
            "file": self.file,
            "rows": self.rows_total,
            "ok": self.rows_ok,
            "errors": [e.as_dict() for e in self.errors],
        }


_ROLE_HINT = "expected system, user or assistant"


def _json_type(value: Any) -> str:
    """JSON's name for a Python value's type, as a user wrote it."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


SHOWN = 60  # characters of a user's value quoted in a message (a huge field is named, not echoed)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


def read_raw(path: str | Path) -> list[RawRow]:
    """All non-blank lines of a JSONL file, each parsed or with the reason it could not be.

    The byte-level reading is `llmtailor.io.read_jsonl_rows` (shared with every other JSONL reader): lines split on
    LF (CRLF, a CR-only file and a byte-order mark at the start are accepted), so line numbers match what an editor
    shows; a line that is not UTF-8, nests too deeply, holds a lone surrogate or is over-long is one bad row, not a
    bad file. A missing file is a TailorError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise TailorError(f"{path}: data file not found")
    return [RawRow(line, obj, problem, where) for line, obj, where, problem in read_jsonl_rows(path)]


def _check_text(
    obj: dict[str, Any], key: str, file: str, line: int, kind: str, required: bool, where: str = ""
) -> list[RowProblem]:
    """A string field that must be present (when required) and not blank; `where` prefixes the field name."""
    name = f"{where}.{key}" if where else key
    if key not in obj or (not required and obj[key] is None):
        return [RowProblem(file, line, name, "missing", kind)] if required else []
    value = obj[key]
    if not isinstance(value, str):
        return [RowProblem(file, line, name, f"expected a string, got {_json_type(value)}", kind)]
    if required and not value.strip():
        return [RowProblem(file, line, name, "is empty", kind)]
    return []


def _check_alpaca(obj: dict[str, Any], file: str, line: int) -> list[RowProblem]:
    problems = _check_text(obj, "instruction", file, line, "alpaca_field", required=True)
    problems += _check_text(obj, "input", file, line, "alpaca_field", required=False)
    problems += _check_text(obj, "output", file, line, "alpaca_field", required=True)
    return problems


def _check_messages(obj: dict[str, Any], file: str, line: int) -> list[RowProblem]:
    if "messages" not in obj:
        hint = "expected a list of {role, content} turns, or Alpaca instruction/output"
        return [RowProblem(file, line, "messages", f"missing ({hint})", "missing_messages")]
    messages = obj["messages"]
    if not isinstance(messages, list):
        got = _json_type(messages)
        return [RowProblem(file, line, "messages", f"expected a list of turns, got {got}", "messages_not_list")]
    if not messages:
        return [RowProblem(file, line, "messages", "is empty", "empty_messages")]

    problems: list[RowProblem] = []
    roles: list[str | None] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            got = _json_type(m)
            problems.append(
                RowProblem(
                    file, line, where, f"expected an object with role and content, got {got}", "message_not_object"
                )
            )
            roles.append(None)
            continue
        role = m.get("role")
        if "role" not in m:
            problems.append(RowProblem(file, line, f"{where}.role", f"missing ({_ROLE_HINT})", "bad_role"))
            role = None
        elif role not in ROLES:
            problems.append(
                RowProblem(file, line, f"{where}.role", f"unknown role {_short(role)} ({_ROLE_HINT})", "bad_role")
            )
            role = None
        roles.append(role)
        problems += _check_text(m, "content", file, line, "bad_content", required=True, where=where)
    if any(r is None for r in roles):
        return problems  # order checks on broken turns would only add noise
    return problems + _check_order(roles, file, line)


def _check_order(roles: list[str | None], file: str, line: int) -> list[RowProblem]:
    """Optional system turn first, then user/assistant alternating from user, ending with assistant."""
    problems: list[RowProblem] = []
    for i, role in enumerate(roles):
        if role == "system" and i != 0:
            problems.append(
                RowProblem(file, line, f"messages[{i}].role", "system turn must come first", "system_not_first")
            )
    expected = "user"
    for i, role in enumerate(roles):
        if role == "system":
            continue
        if role != expected:
            problem = f"expected {expected!r} (turns alternate user/assistant, starting with user), got {role!r}"
            return problems + [RowProblem(file, line, f"messages[{i}].role", problem, "bad_order")]
        expected = "assistant" if role == "user" else "user"
    last = len(roles) - 1
    if roles[last] != "assistant":
        problem = f"last turn must be 'assistant', got {roles[last]!r}"
        problems.append(RowProblem(file, line, f"messages[{last}].role", problem, "last_not_assistant"))
    return problems


def check_row(
    raw: RawRow, file: str | Path, *, fmt: str = "auto", system_prompt: str | None = None, source: str = ""
) -> tuple[Row | None, list[RowProblem]]:
    """Structural checks and conversion of one row; returns (Row, []) or (None, problems)."""
    file = str(file)
    if raw.obj is None:
        error = raw.error or "unreadable row"
        kind = ("not_object" if error.startswith("expected a JSON object") else "not_utf8"
                if error.startswith("not valid UTF-8") else "bad_unicode" if raw.where else "too_deep"
                if error.startswith("JSON nested too deeply") else "too_long" if error.startswith("line longer")
                else "malformed_json")
        return None, [RowProblem(file, raw.line, raw.where, error, kind)]
    obj = raw.obj
    row_fmt = detect_format(obj) if fmt == "auto" else fmt
    if row_fmt == "alpaca":
        problems = _check_alpaca(obj, file, raw.line)
        if problems:
            return None, problems
        messages = alpaca_to_messages(obj)
        extra = {k: v for k, v in obj.items() if k not in ALPACA_KEYS}
    else:
        problems = _check_messages(obj, file, raw.line)
        if problems:
            return None, problems
        messages = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
        extra = {k: v for k, v in obj.items() if k != "messages"}
    messages, added = with_system_prompt(messages, system_prompt)
    return Row(messages, extra, source, file, raw.line, converted=row_fmt == "alpaca", system_added=added), []


def token_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of the rendered conversation, exactly as training will see it."""
    try:
        return len(tokenize_for_training(tokenizer, messages)["input_ids"])
    except ValueError as e:
        raise TailorError(f"tokenizer: {e}") from None


def length_problem(row: Row, n_tokens: int, max_seq_len: int) -> RowProblem | None:
    """The 'too long' problem for a row of n_tokens, or None when it fits."""
    if n_tokens <= max_seq_len:
        return None
    return RowProblem(
        row.file, row.line, "messages", f"too long: {n_tokens} tokens > max_seq_len {max_seq_len}", "overlength"
    )


def validate_file(
    path: str | Path,
    tokenizer: Any = None,
    max_seq_len: int | None = None,
    system_prompt: str | None = None,
    fmt: str = "auto",
) -> ValidationReport:
    """Check every row of a JSONL file; token lengths are checked only when a tokenizer is given."""
    raws = read_raw(path)
    limit = max_seq_len or DEFAULT_MAX_SEQ_LEN
    errors: list[RowError] = []
    ok = 0
    for raw in raws:
        row, problems = check_row(raw, path, fmt=fmt, system_prompt=system_prompt)
        if row is not None and tokenizer is not None:
            too_long = length_problem(row, token_length(tokenizer, row.messages), limit)
            if too_long:
                problems = [too_long]
        errors += problems
        ok += not problems
    return ValidationReport(str(path), len(raws), ok, errors)
