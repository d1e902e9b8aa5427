"""The shared JSONL reader (`llmtailor.io`): every byte-level oddity of a line is that line's error, located as
file:line (and field), and never an exception that loses the rest of the file. The same reader feeds
`read_jsonl`, `tailor data validate` / `prepare` and preference files, so all of them agree on line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmtailor import io
from llmtailor.cli.main import app
from llmtailor.data.preferences import validate_preferences
from llmtailor.data.validate import validate_file
from llmtailor.errors import RowError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
G = json.dumps(GOOD).encode()
PAIR = json.dumps({"prompt": [{"role": "user", "content": "q"}], "chosen": "yes", "rejected": "no"}).encode()


def _lenient(path: Path) -> list[tuple[int, bool, str | None]]:
    return [(line, obj is not None, problem) for line, obj, problem in io.read_jsonl_lenient(path)]


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    return path


def test_a_byte_order_mark_at_the_start_is_accepted(tmp_path):
    path = _file(tmp_path, io.BOM + G + b"\n" + G + b"\n")
    assert _lenient(path) == [(1, True, None), (2, True, None)]
    assert [obj for _, obj in io.read_jsonl(path)] == [GOOD, GOOD]


def test_invalid_utf8_is_that_lines_error_and_the_other_lines_load(tmp_path):
    path = _file(tmp_path, G + b'\n{"a": "caf\xe9"}\n' + G + b"\n")
    assert _lenient(path) == [(1, True, None), (2, False, "not valid UTF-8 (byte 0xe9 at column 11)"), (3, True, None)]
    with pytest.raises(RowError, match=r"rows\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 11\)"):
        list(io.read_jsonl(path))


def test_a_utf16_file_gets_a_hint(tmp_path):
    path = _file(tmp_path, "\ufeff".encode("utf-16-le").join([b"", json.dumps(GOOD).encode("utf-16-le")]))
    (line, ok, problem), *_ = _lenient(path)
    assert (line, ok) == (1, False) and "byte 0xff at column 1" in problem and "UTF-16" in problem


@pytest.mark.parametrize("depth", [990, 100_000])
def test_deep_nesting_is_reported_not_raised(tmp_path, depth):
    """100k levels overflow json.loads (RecursionError); 990 levels parse but break json.dumps when the row is
    written back from inside a call stack, so both are rejected at read time."""
    deep = b'{"a": ' * depth + b"1" + b"}" * depth
    path = _file(tmp_path, G + b"\n" + deep + b"\n" + G[:-1] + b', "meta": ' + b"[" * depth + b"]" * depth + b"}\n")
    too_deep = f"JSON nested too deeply (more than {io.MAX_DEPTH} levels)"
    assert _lenient(path) == [(1, True, None), (2, False, too_deep), (3, False, too_deep)]


def test_a_lone_surrogate_is_reported_with_its_field(tmp_path):
    path = _file(tmp_path, b'{"messages": [{"role": "user", "content": "a\\ud800"}]}\n' + G + b"\n")
    (line, ok, problem), second = _lenient(path)
    assert (line, ok, second) == (1, False, (2, True, None))
    assert problem.startswith("messages[0].content: invalid Unicode")
    with pytest.raises(RowError) as e:
        list(io.read_jsonl(path))
    assert (e.value.line, e.value.field) == (1, "messages[0].content")


def test_huge_numbers_nul_bytes_and_non_objects_are_row_errors(tmp_path):
    path = _file(tmp_path, b'{"a": ' + b"1" * 5000 + b"}\n\x00\x00\n[1]\n5\n" + G + b"\n")
    got = _lenient(path)
    assert [(line, ok) for line, ok, _ in got] == [(1, False), (2, False), (3, False), (4, False), (5, True)]
    assert got[0][2].startswith("malformed JSON (Exceeds the limit")
    assert got[2][2] == "expected a JSON object, got list"


def test_cr_only_line_endings_split_rows_the_same_way_everywhere(tmp_path):
    path = _file(tmp_path, G + b"\r" + b"{oops\r" + G + b"\r")
    assert _lenient(path) == [(1, True, None), (2, False, "malformed JSON (Expecting property name enclosed in "
                                                      "double quotes at column 2)"), (3, True, None)]
    report = validate_file(path)
    assert (report.rows_total, report.rows_ok, [e.line for e in report.errors]) == (3, 2, [2])


def test_crlf_and_a_cr_inside_a_line_keep_lf_line_numbers(tmp_path):
    """With LF in the file, only LF ends a line (as sed -n and grep -n count): CR inside a row is JSON whitespace."""
    path = _file(tmp_path, G + b"\r\n" + b'{"messages":\r[]}\r\n' + G + b"\r\n")
    assert [(line, ok) for line, ok, _ in _lenient(path)] == [(1, True), (2, True), (3, True)]


def test_an_over_long_line_is_skipped_unread_and_the_next_lines_load(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(io, "_BLOCK", 64)  # lines and the long line span many read blocks
    long_row = b'{"messages": "' + b"x" * 5000 + b'"}'
    path = _file(tmp_path, G + b"\n" + long_row + b"\n" + G + b"\n" + long_row)
    assert _lenient(path) == [(1, True, None), (2, False, "line longer than 1,000 bytes (skipped unread)"),
                              (3, True, None), (4, False, "line longer than 1,000 bytes (skipped unread)")]
    report = validate_file(path)
    assert (report.rows_total, report.rows_ok) == (4, 2) and str(report.errors[0]).startswith(f"{path}:2: line longer")


def test_preference_files_report_byte_level_problems_without_a_traceback(tmp_path):
    path = _file(tmp_path, PAIR + b"\n\xff\xfe\n" + b"[" * 100_000 + b"\n" + PAIR + b"\n")
    report = validate_preferences(path)
    assert len(report.rows) == 2 and [(p.line, p.problem[:15]) for p in report.problems] == [
        (2, "not valid UTF-8"), (3, "JSON nested too")]
    res = CliRunner().invoke(app, ["data", "check-preferences", str(path)])
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit))
    assert f"{path}:2: not valid UTF-8" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_that_lines_error(tmp_path, constant):
    """Python's json reads NaN/Infinity, but they are not JSON: a row carrying one would be written back as
    invalid JSON by every later stage (and rejected by strict readers), so it is refused at read time."""
    path = _file(tmp_path, G + b"\n" + G[:-1] + f', "meta": {{"score": {constant}}}}}\n'.encode() + G + b"\n")
    problem = f"not valid JSON: {constant} is not a JSON number (write null or a finite number)"
    assert _lenient(path) == [(1, True, None), (2, False, problem), (3, True, None)]
    with pytest.raises(RowError, match=r"rows\.jsonl:2: not valid JSON"):
        list(io.read_jsonl(path))


def test_the_strings_nan_and_infinity_are_ordinary_text(tmp_path):
    path = _file(tmp_path, json.dumps({**GOOD, "meta": {"a": "NaN", "b": "Infinity"}}).encode() + b"\n")
    assert _lenient(path) == [(1, True, None)]
