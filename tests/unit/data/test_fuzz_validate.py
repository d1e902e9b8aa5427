"""Fuzzing `tailor data validate` and `prepare`: files mixing good rows with random bytes, invalid UTF-8, mangled
JSON, wrong types, missing roles, huge fields, BOMs, CRLF and CR-only line ends, NUL bytes, deep nesting (also the
kind that parses but cannot be written back), huge numbers and lone surrogates. Every bad line is reported as
file:line (with the field where there is one), every good row is kept (counted), nothing crashes with a traceback,
and prepare writes a complete version or nothing."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmtailor.cli.main import app
from llmtailor.data.config import DataConfig
from llmtailor.data.prepare import prepare
from llmtailor.data.validate import validate_file
from llmtailor.errors import TailorError
from llmtailor.io import MAX_DEPTH, read_jsonl_lenient, write_jsonl

runner = CliRunner()
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
TEXT = TEXT.filter(lambda s: s.strip())


@st.composite
def good_row(draw) -> bytes:
    system = draw(st.booleans())
    turns = draw(st.integers(1, 2))
    msgs = [{"role": "system", "content": draw(TEXT)}] if system else []
    for _ in range(turns):
        msgs += [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": draw(TEXT)}]
    row: dict = {"messages": msgs}
    if draw(st.booleans()):
        row = {"instruction": draw(TEXT), "input": draw(st.one_of(st.none(), TEXT)), "output": draw(TEXT)}
    if draw(st.booleans()):
        row["id"] = draw(st.integers(0, 10**6))
    return json.dumps(row, ensure_ascii=draw(st.booleans())).encode()


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


GOOD_MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
BAD_FIXED = [
    b"{not json",
    b'{"messages": [{"role": "user", "content": "cut',
    b"[1, 2, 3]",
    b'"just a string"',
    b"null",
    b'{"messages": "hello"}',
    b'{"messages": []}',
    b'{"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]}',
    b'{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}',
    b'{"messages": [{"role": "robot", "content": "x"}]}',
    b'{"messages": [{"role": ["user"], "content": "x"}, {"role": "assistant", "content": "y"}]}',
    b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}',
    b'{"messages": [{"role": "user", "content": "a"}]}',
    b'{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": "a\x00b"}, {"role": "assistant", "content": "y"}]}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "y"}]}',
    b'{"instruction": 7, "output": "y"}',
    b'{"instruction": "x", "output": ""}',
    b"\xff\xfe{\"messages\": []}",
    b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "y"}]}',
    b"[" * 5000 + b"]" * 5000,
    b'{"messages": ' + b"1" * 5000 + b"}",
    b'{"messages": [{"role": "' + b"r" * 200_000 + b'", "content": "x"}]}',
    b"\x00\x00\x00",
    b"\xef\xbb\xbf" + _json({"messages": GOOD_MSGS}),  # a BOM that is not at the start of the file
    # parses (under json's recursion limit) but json.dumps fails on it when prepare writes the row back
    _json({"messages": GOOD_MSGS})[:-1] + b', "meta": ' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"messages": ' + b'{"a": ' * 400 + b"1" + b"}" * 401,
    b'{"messages": [{"role": "user", "content": "a\\udfff"}, {"role": "assistant", "content": "\xc3\x28"}]}',
]


def _depth(obj) -> int:
    """Nesting depth of a parsed value (iterative: the fuzz rows nest deeper than the stack allows)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest

def _blank(raw: bytes) -> bool:
    """A line the reader skips: empty or whitespace once the line break (LF or CRLF) is removed."""
    try:
        return not raw.rstrip(b"\r").decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


BAD = st.one_of(
    st.sampled_from(BAD_FIXED),
    st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and not _blank(b)),
    good_row().map(lambda b: b[: max(1, len(b) // 2)]),  # a row cut in half
)


@st.composite
def jsonl_file(draw) -> tuple[bytes, list[int], list[int]]:
    """(file bytes, good line numbers, bad line numbers); optional BOM at the start, LF, CRLF or CR-only line
    ends (in a CR-only file a CR inside a bad line would end it, so those become 'x')."""
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=25))
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    lines, good, bad = [], [], []
    for n, is_good in enumerate(kinds, start=1):
        raw = draw(good_row() if is_good else BAD)
        if eol == b"\r":
            raw = raw.replace(b"\r", b"x")
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = b" " + raw  # a leading BOM on line 1 would be the file's own (accepted): keep this one bad
        (good if is_good else bad).append(n)
        lines.append(raw)
    start = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return start + eol.join(lines) + eol, good, bad


def _parses_as_object(raw: bytes, line: int) -> bool:
    try:
        obj = json.loads(raw.removeprefix(b"\xef\xbb\xbf" if line == 1 else b"").decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and _depth(obj) <= MAX_DEPTH


def _lines(data: bytes) -> list[bytes]:
    """The file's lines as the test built them: split on CR in a file without LF, else on LF."""
    return data.split(b"\r" if b"\n" not in data else b"\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(jsonl_file())
def test_validate_reports_every_bad_line_and_keeps_every_good_row(tmp_path_factory, case):
    data, good, bad = case
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_bytes(data)
    report = validate_file(path)
    assert report.rows_total == len(good) + len(bad)
    assert report.rows_ok == len(good)
    assert {e.line for e in report.errors} == set(bad)
    lines = _lines(data)
    for e in report.errors:
        assert e.file == str(path) and str(e).startswith(f"{path}:{e.line}: ")
        assert len(str(e)) < 2000  # a huge field is named, not echoed
        if _parses_as_object(lines[e.line - 1].rstrip(b"\r"), e.line):
            assert e.field, e  # a problem inside a parsed row names its field
    res = runner.invoke(app, ["data", "validate", str(path), "--json"])
    assert res.exit_code == (1 if bad else 0) and (res.exception is None or isinstance(res.exception, SystemExit))
    out = json.loads(res.stdout)
    assert (out["rows"], out["ok"]) == (len(good) + len(bad), len(good))
    res = runner.invoke(app, ["data", "validate", str(path)])
    assert res.exit_code == (1 if bad else 0) and "Traceback" not in res.output
    assert f"{len(good)} of {len(good) + len(bad)} rows ok" in res.output


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(jsonl_file())
def test_prepare_keeps_good_rows_reports_bad_ones_and_writes_all_or_nothing(tmp_path_factory, tiny_tokenizer, case):
    data, good, bad = case
    root = tmp_path_factory.mktemp("prep")
    path = root / "rows.jsonl"
    path.write_bytes(data)
    cfg = DataConfig.model_validate({"sources": [str(path)], "output_dir": str(root / "out"), "max_seq_len": 100_000,
                                     "dedup": {"enabled": False}, "pii": {"enabled": False}})
    if not good:
        try:
            prepare(cfg, tiny_tokenizer, show_progress=False)
        except TailorError as e:
            assert "no usable rows" in str(e)
        else:
            raise AssertionError("a file without a good row must not make a version")
        assert not (root / "out").exists() or list((root / "out").iterdir()) == []
        return
    version = prepare(cfg, tiny_tokenizer, show_progress=False)
    card = version.card
    assert card["rows_in"] == len(good) + len(bad) and card["rows_kept"] == len(good)
    assert card["train_rows"] + card["eval_rows"] == len(good)
    written = [json.loads(x) for f in ("train.jsonl", "eval.jsonl")
               for x in (version.path / f).read_bytes().split(b"\n") if x]  # LF only: U+0085 is not a break
    assert len(written) == len(good)
    assert {int(e.split(":")[1]) for e in card["errors"]} == set(bad) and card["errors_total"] >= len(bad)
    assert [p.name for p in (root / "out").iterdir()] == [version.hash]  # no temporary folder left


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(jsonl_file())
def test_the_shared_reader_never_raises_and_what_it_returns_can_be_written(tmp_path_factory, case):
    """`read_jsonl_lenient` (read_jsonl, preference files) sees the same lines as validate: one entry per line,
    every good row parsed, no exception from any byte; every object it returns can be written back as JSONL."""
    data, good, bad = case
    root = tmp_path_factory.mktemp("lenient")
    path = root / "rows.jsonl"
    path.write_bytes(data)
    got = list(read_jsonl_lenient(path))
    assert [line for line, _, _ in got] == sorted(good + bad)
    objects = [obj for line, obj, problem in got if obj is not None and problem is None]
    lines = _lines(data)
    assert {line for line, obj, _ in got if obj is not None} >= set(good)
    for line, obj, _ in got:
        if line in good:
            assert obj == json.loads(lines[line - 1].rstrip(b"\r").removeprefix(b"\xef\xbb\xbf"))
    for _, obj, problem in got:
        assert (obj is None) == (problem is not None) and (problem is None or len(problem) < 2000)
    write_jsonl(root / "out.jsonl", objects)
    assert [json.loads(x) for x in (root / "out.jsonl").read_bytes().split(b"\n") if x] == objects
