"""`tailor data validate|prepare` through typer's runner (tiny tokenizer stands in for the model)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmtailor.cli.data import app

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # older click
    except TypeError:
        return CliRunner()


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_validate_ok_exits_0(tmp_path):
    f = write(tmp_path / "d.jsonl", [GOOD, GOOD])
    result = runner().invoke(app, ["validate", str(f)])
    assert result.exit_code == 0, result.output
    assert "2 of 2 rows ok" in result.stderr


def test_validate_bad_prints_locations_and_exits_1(tmp_path):
    f = write(tmp_path / "d.jsonl", [GOOD, BAD])
    result = runner().invoke(app, ["validate", str(f)])
    assert result.exit_code == 1
    assert f"{f}:2: messages[1].role: unknown role 'bot' (expected system, user or assistant)" in result.stderr
    assert result.stdout == ""


def test_validate_json(tmp_path):
    f = write(tmp_path / "d.jsonl", [GOOD, BAD])
    result = runner().invoke(app, ["validate", str(f), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "file": str(f),
        "rows": 2,
        "ok": 1,
        "errors": [
            {
                "file": str(f),
                "line": 2,
                "field": "messages[1].role",
                "problem": "unknown role 'bot' (expected system, user or assistant)",
            }
        ],
    }


def test_validate_with_config_checks_length(tmp_path, tiny_tokenizer, monkeypatch):
    import llmtailor.models

    monkeypatch.setattr(llmtailor.models, "load_tokenizer", lambda cfg: tiny_tokenizer)
    (tmp_path / "tailor.yaml").write_text("data:\n  max_seq_len: 32\n", encoding="utf-8")
    long = {"messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]}
    f = write(tmp_path / "d.jsonl", [GOOD, long])
    result = runner().invoke(app, ["validate", str(f), "-c", str(tmp_path / "tailor.yaml"), "--json"])
    assert result.exit_code == 1
    [err] = json.loads(result.stdout)["errors"]
    assert err["line"] == 2 and err["field"] == "messages" and err["problem"].endswith("tokens > max_seq_len 32")


def test_prepare_json_and_reuse(tmp_path, tiny_tokenizer, monkeypatch):
    import llmtailor.models

    monkeypatch.setattr(llmtailor.models, "load_tokenizer", lambda cfg: tiny_tokenizer)
    rows = [
        {"messages": [{"role": "user", "content": f"q{i} " * (i + 1)}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(10)
    ]
    write(tmp_path / "d.jsonl", rows)
    (tmp_path / "tailor.yaml").write_text(
        "data:\n  sources: [d.jsonl]\n  pii: {enabled: false}\n  output_dir: out\n", encoding="utf-8"
    )
    args = ["prepare", "-c", str(tmp_path / "tailor.yaml"), "--json"]
    first = runner().invoke(app, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["reused"] is False and out["rows_kept"] == 10 and out["train_rows"] + out["eval_rows"] == 10
    assert out["path"] == str(tmp_path / "out" / out["hash"])
    assert "config" not in out and "histogram" not in out["token_lengths"]
    again = json.loads(runner().invoke(app, args).stdout)
    assert again["reused"] is True and again["hash"] == out["hash"]

    human = runner().invoke(app, ["prepare", "-c", str(tmp_path / "tailor.yaml")])
    assert human.exit_code == 0 and out["hash"] in human.stderr and "reused" in human.stderr
