"""Validation: every bad-input case yields the exact `file:line: field: problem`, and good rows convert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.data.validate import RawRow, check_row, validate_file
from llmtailor.errors import TailorError


def write_lines(path: Path, lines: list) -> Path:
    """Each item: a str (written as is) or a JSON value."""
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def chat(*turns: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


GOOD = chat(("user", "hi"), ("assistant", "hello"))

BAD_CASES = [
    ('{"messages": x}', None, "malformed JSON (Expecting value at column 14)"),
    ([1, 2], None, "expected a JSON object, got list"),
    ({"id": 1}, "messages", "missing (expected a list of {role, content} turns, or Alpaca instruction/output)"),
    ({"messages": "hi"}, "messages", "expected a list of turns, got string"),
    ({"messages": []}, "messages", "is empty"),
    (
        {"messages": ["hi", {"role": "assistant", "content": "x"}]},
        "messages[0]",
        "expected an object with role and content, got string",
    ),
    (
        chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("bot", "d")),
        "messages[3].role",
        "unknown role 'bot' (expected system, user or assistant)",
    ),
    (
        {"messages": [{"content": "a"}, {"role": "assistant", "content": "b"}]},
        "messages[0].role",
        "missing (expected system, user or assistant)",
    ),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]}, "messages[0].content", "missing"),
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}]},
        "messages[1].content",
        "expected a string, got number",
    ),
    (chat(("user", "a"), ("assistant", "  ")), "messages[1].content", "is empty"),
    (chat(("user", "a"), ("system", "s"), ("assistant", "b")), "messages[1].role", "system turn must come first"),
    (
        chat(("assistant", "a"), ("user", "b"), ("assistant", "c")),
        "messages[0].role",
        "expected 'user' (turns alternate user/assistant, starting with user), got 'assistant'",
    ),
    (
        chat(("user", "a"), ("user", "b"), ("assistant", "c")),
        "messages[1].role",
        "expected 'assistant' (turns alternate user/assistant, starting with user), got 'user'",
    ),
    (
        chat(("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c")),
        "messages[3].role",
        "last turn must be 'assistant', got 'user'",
    ),
    ({"instruction": "", "output": "x"}, "instruction", "is empty"),
    ({"instruction": "do", "input": 3, "output": "x"}, "input", "expected a string, got number"),
    ({"instruction": "do"}, "output", "missing"),
]


@pytest.mark.parametrize(("line", "field", "problem"), BAD_CASES)
def test_each_bad_row_is_reported_exactly(tmp_path, line, field, problem):
    f = write_lines(tmp_path / "d.jsonl", [GOOD, line, GOOD])
    report = validate_file(f)
    assert (report.rows_total, report.rows_ok) == (3, 2)
    assert [str(e) for e in report.errors] == [f"{f}:2: {field + ': ' if field else ''}{problem}"]
    assert report.errors[0].as_dict() == {"file": str(f), "line": 2, "field": field, "problem": problem}


def test_all_problems_of_a_row_and_of_a_file_are_collected(tmp_path):
    row = {"messages": [{"role": "bot", "content": ""}, 7]}
    f = write_lines(tmp_path / "d.jsonl", [row, "not json", GOOD, {"instruction": 1}])
    got = [str(e) for e in validate_file(f).errors]
    assert got == [
        f"{f}:1: messages[0].role: unknown role 'bot' (expected system, user or assistant)",
        f"{f}:1: messages[0].content: is empty",
        f"{f}:1: messages[1]: expected an object with role and content, got number",
        f"{f}:2: malformed JSON (Expecting value at column 1)",
        f"{f}:4: instruction: expected a string, got number",
        f"{f}:4: output: missing",
    ]


def test_line_numbers_count_blank_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({"messages": 1}) + "\n", encoding="utf-8")
    assert str(validate_file(f).errors[0]) == f"{f}:3: messages: expected a list of turns, got number"


def test_too_long_is_checked_only_with_a_tokenizer(tmp_path, tiny_tokenizer):
    long = chat(("user", "word " * 200), ("assistant", "ok"))
    f = write_lines(tmp_path / "d.jsonl", [GOOD, long])
    assert validate_file(f).errors == []
    report = validate_file(f, tokenizer=tiny_tokenizer, max_seq_len=64)
    [err] = report.errors
    assert (err.line, err.field) == (2, "messages")
    assert err.problem.startswith("too long: ") and err.problem.endswith(" tokens > max_seq_len 64")
    assert int(err.problem.split()[2]) > 200


def test_length_counts_the_system_prompt(tmp_path, tiny_tokenizer):
    f = write_lines(tmp_path / "d.jsonl", [GOOD])
    assert validate_file(f, tokenizer=tiny_tokenizer, max_seq_len=40).rows_ok == 1
    report = validate_file(f, tokenizer=tiny_tokenizer, max_seq_len=40, system_prompt="be terse " * 20)
    assert report.rows_ok == 0 and report.errors[0].field == "messages"


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(TailorError, match="nope.jsonl: data file not found"):
        validate_file(tmp_path / "nope.jsonl")


def test_alpaca_is_converted_with_input_and_extra_keys_kept():
    row, problems = check_row(
        RawRow(1, {"instruction": "Summarise", "input": "Long text.", "output": "Short.", "id": 7}), "f.jsonl"
    )
    assert problems == []
    assert row.converted
    assert row.to_json() == {
        "messages": [
            {"role": "user", "content": "Summarise\n\nLong text."},
            {"role": "assistant", "content": "Short."},
        ],
        "id": 7,
    }
    row, _ = check_row(RawRow(1, {"instruction": "Say hi", "input": "", "output": "Hi"}), "f.jsonl")
    assert row.messages[0] == {"role": "user", "content": "Say hi"}


def test_format_chat_does_not_accept_alpaca_rows():
    _, problems = check_row(RawRow(4, {"instruction": "x", "output": "y"}), "f.jsonl", fmt="chat")
    assert [p.field for p in problems] == ["messages"]


def test_system_prompt_added_only_when_missing():
    row, _ = check_row(RawRow(1, {"instruction": "a", "output": "b"}), "f", system_prompt="You help.")
    assert row.messages[0] == {"role": "system", "content": "You help."} and row.system_added
    own = chat(("system", "Mine."), ("user", "a"), ("assistant", "b"), meta={"k": 1})
    row, _ = check_row(RawRow(1, own), "f", system_prompt="You help.")
    assert row.messages[0]["content"] == "Mine." and not row.system_added
    assert row.to_json() == own
