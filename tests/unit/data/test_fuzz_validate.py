"""Fuzzing `tailor data validate` and `prepare`: files mixing good rows with random bytes, invalid UTF-8, mangled
JSON, wrong types, missing roles, huge fields, BOMs, CRLF, NUL bytes, deep nesting, huge numbers and lone
surrogates. Every bad line is reported as file:line (with the field where there is one), every good row is kept
(counted), nothing crashes with a traceback, and prepare writes a complete version or nothing."""

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
]
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
    """(file bytes, good line numbers, bad line numbers); optional BOM at the start, LF or CRLF line ends."""
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=25))
    lines, good, bad = [], [], []
    for n, is_good in enumerate(kinds, start=1):
        raw = draw(good_row() if is_good else BAD)
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = b" " + raw  # a leading BOM on line 1 would be the file's own (accepted): keep this one bad
        (good if is_good else bad).append(n)
        lines.append(raw)
    eol = b"\r\n" if draw(st.booleans()) else b"\n"
    start = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return start + eol.join(lines) + eol, good, bad


def _parses_as_object(raw: bytes, line: int) -> bool:
    try:
        return isinstance(json.loads(raw.removeprefix(b"\xef\xbb\xbf" if line == 1 else b"").decode("utf-8")), dict)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False


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
    lines = data.split(b"\n")
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
