"""Golden test sets (data.test_sources) and train/test leakage, on the tiny tokenizer (PII off unless faked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmtailor.data import DataConfig
from llmtailor.data.config import DedupConfig
from llmtailor.data.dedup import find_matches
from llmtailor.data.leakage import leakage_results
from llmtailor.data.prepare import prepare
from llmtailor.data.rows import Row
from llmtailor.errors import TailorError
from llmtailor.eval.gates import check_gates
from tests.unit.data.test_data_prepare import chat, distinct_rows, read, write

LONG = (
    "our support team answers every ticket within one business day and escalates urgent outages "
    "to the on call engineer who posts updates on the status page every thirty minutes until the "
    "incident is resolved and a written summary is shared with all affected customers afterwards"
)


def golden_rows() -> list[dict]:
    return [
        chat("How do I export my invoices as PDF?", "Billing, then Invoices, then Export.", id="g1"),
        {"instruction": "Classify the ticket.", "input": "The VPN drops every hour.", "output": "network", "id": "g2"},
        chat("Can I change the delivery address after ordering?", "Yes, until the parcel ships.", id="g3"),
    ]


def config(tmp_path: Path, sources: list[Path], tests: list[Path], **kw) -> DataConfig:
    kw.setdefault("pii", {"enabled": False})
    kw.setdefault("max_seq_len", 2048)
    return DataConfig(
        sources=[str(f) for f in sources],
        test_sources=[str(f) for f in tests],
        output_dir=tmp_path / "datasets",
        **kw,
    )


def test_golden_set_is_the_eval_split_and_every_source_row_trains(tmp_path, tiny_tokenizer):
    src = write(tmp_path / "tickets.jsonl", distinct_rows(12))
    gold = write(tmp_path / "golden.jsonl", golden_rows())
    v = prepare(config(tmp_path, [src], [gold], system_prompt="Be brief."), tiny_tokenizer, show_progress=False)

    train, evals = read(v.train_file), read(v.eval_file)
    assert len(train) == 12 and [r["id"] for r in evals] == ["g1", "g2", "g3"]  # no random split, order kept
    assert not {json.dumps(r["messages"]) for r in train} & {json.dumps(r["messages"]) for r in evals}
    assert evals[1]["messages"] == [  # Alpaca converted, system prompt added, like training rows
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Classify the ticket.\n\nThe VPN drops every hour."},
        {"role": "assistant", "content": "network"},
    ]
    card = v.card
    assert (card["train_rows"], card["eval_rows"], card["rows_kept"], card["rows_in"]) == (12, 3, 12, 12)
    split = card["eval_split"]
    assert split["source"] == "test_sources" and "golden test set" in split["description"]
    assert [(f["name"], f["path"], f["rows"]) for f in split["files"]] == [("golden", str(gold), 3)]
    assert split["converted_alpaca"] == 1 and split["system_prompt_added"] == 3
    assert card["leakage"]["count"] == 0 and card["leakage"]["eval_rows"] == 3 and card["leakage"]["rows"] == []
    assert card["config"]["test_sources"][0]["path"] == str(gold)
    md = (v.path / "card.md").read_text()
    assert "3 eval (eval = the golden test set, never trained on)" in md
    assert "## Eval split" in md and f"| golden | {gold} | 3 |" in md
    assert "**0 of 3 eval rows** also occur in the training rows" in md


def test_hash_covers_test_rows_and_reuses_unchanged_inputs(tmp_path, tiny_tokenizer):
    src = write(tmp_path / "tickets.jsonl", distinct_rows(8))
    gold = write(tmp_path / "golden.jsonl", golden_rows())
    cfg = config(tmp_path, [src], [gold])
    first = prepare(cfg, tiny_tokenizer, show_progress=False)
    assert prepare(cfg, tiny_tokenizer, show_progress=False).reused

    rows = golden_rows()
    rows[0]["messages"][1]["content"] = "Billing, then Invoices, then Download."
    write(gold, rows)
    changed = prepare(cfg, tiny_tokenizer, show_progress=False)
    assert not changed.reused and changed.hash != first.hash
    assert read(changed.eval_file)[0]["messages"][1]["content"].endswith("Download.")

    no_tests = prepare(cfg.model_copy(update={"test_sources": []}), tiny_tokenizer, show_progress=False)
    assert no_tests.hash not in (first.hash, changed.hash)
    assert no_tests.card["eval_split"]["source"] == "random_split"


def test_relative_test_sources_resolve_against_the_yaml_folder(tmp_path):
    from llmtailor.config import load_config

    (tmp_path / "proj").mkdir()
    yaml = tmp_path / "proj" / "tailor.yaml"
    yaml.write_text(
        "data:\n  sources: [data/train.jsonl]\n  test_sources:\n    - eval/golden.jsonl\n"
        "    - {path: eval/faq.jsonl, format: alpaca, name: faq}\n",
        encoding="utf-8",
    )
    cfg = load_config(yaml)
    base = (tmp_path / "proj").resolve()
    assert cfg.data.sources[0].path == base / "data" / "train.jsonl"
    assert [(s.path, s.format, s.label) for s in cfg.data.test_sources] == [
        (base / "eval" / "golden.jsonl", "auto", "golden"),
        (base / "eval" / "faq.jsonl", "alpaca", "faq"),
    ]
    assert DataConfig(test_sources="g.jsonl").test_sources[0].path == Path("g.jsonl")  # a bare path
    with pytest.raises(ValueError, match="leakage"):
        DataConfig(leakage="ignore")


def test_empty_test_source_is_an_error_naming_the_file(tmp_path, tiny_tokenizer):
    src = write(tmp_path / "tickets.jsonl", distinct_rows(8))
    gold = tmp_path / "golden.jsonl"
    gold.write_text("\n  \n", encoding="utf-8")  # blank lines only
    with pytest.raises(TailorError, match=re.escape(f"{gold}: data.test_sources file has no rows")):
        prepare(config(tmp_path, [src], [gold]), tiny_tokenizer, show_progress=False)
    assert not (tmp_path / "datasets").exists()


def test_malformed_test_rows_fail_with_file_line_and_field(tmp_path, tiny_tokenizer):
    src = write(tmp_path / "tickets.jsonl", distinct_rows(8))
    bad_role = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}
    gold = write(tmp_path / "golden.jsonl", [*golden_rows(), bad_role, "{bad", {"instruction": "x"}])
    with pytest.raises(TailorError) as e:
        prepare(config(tmp_path, [src], [gold]), tiny_tokenizer, show_progress=False)
    msg = str(e.value)
    assert msg.startswith("data.test_sources: 3 invalid test row(s)")
    assert f"{gold}:4: messages[1].role: unknown role 'bot'" in msg
    assert f"{gold}:5: malformed JSON" in msg
    assert f"{gold}:6: output: missing" in msg
    assert not (tmp_path / "datasets").exists()  # nothing half-written


def test_prepare_cli_exits_non_zero_on_an_empty_test_source(tmp_path, tiny_tokenizer, monkeypatch):
    import llmtailor.models
    from llmtailor.cli.data import app

    monkeypatch.setattr(llmtailor.models, "load_tokenizer", lambda cfg: tiny_tokenizer)
    write(tmp_path / "d.jsonl", distinct_rows(6))
    (tmp_path / "golden.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "tailor.yaml").write_text(
        "data:\n  sources: [d.jsonl]\n  test_sources: [golden.jsonl]\n  pii: {enabled: false}\n", encoding="utf-8"
    )
    result = CliRunner().invoke(app, ["prepare", "-c", str(tmp_path / "tailor.yaml"), "--json"])
    assert result.exit_code == 1  # main() prints TailorError as one line and exits 1
    assert isinstance(result.exception, TailorError) and "golden.jsonl: data.test_sources" in str(result.exception)
    assert not (tmp_path / "datasets").exists()


def test_test_set_identical_to_training_data_is_all_leakage_and_fails_the_gate(tmp_path, tiny_tokenizer):
    rows = distinct_rows(6)
    src = write(tmp_path / "tickets.jsonl", rows)
    gold = write(tmp_path / "golden.jsonl", rows)
    v = prepare(config(tmp_path, [src], [gold]), tiny_tokenizer, show_progress=False)

    assert len(read(v.eval_file)) == 6 and len(read(v.train_file)) == 6  # reported, never removed
    leak = v.card["leakage"]
    assert (leak["count"], leak["exact"], leak["near"], leak["rate"]) == (6, 6, 0, 1.0)
    assert [(r["test"]["line"], r["train"]["line"], r["kind"]) for r in leak["rows"]] == [
        (i, i, "exact") for i in range(1, 7)
    ]
    assert leak["rows"][0]["test"]["file"] == str(gold) and leak["rows"][0]["train"]["file"] == str(src)
    assert leak["rows"][0]["test"]["text"] == rows[0]["messages"][0]["content"]
    md = (v.path / "card.md").read_text()
    assert "**6 of 6 eval rows** also occur in the training rows (6 exact" in md
    assert f"| {gold}:1 | {src}:1 | exact (1.00) |" in md

    results = {"data": leakage_results(v.card)}
    out = check_gates(["data.leakage == 0", "data.leakage_rate <= 0.5", "data.near.leakage == 0"], results)
    assert [g["passed"] for g in out] == [False, False, True]
    assert out[0]["value"] == 6.0 and out[0]["reason"] == "6 == 0 is false"


def test_near_duplicate_test_row_is_leakage_with_its_train_twin(tmp_path, tiny_tokenizer):
    src = write(tmp_path / "tickets.jsonl", [*distinct_rows(5), chat("How fast do you reply?", LONG, id="t")])
    near = chat("How fast do you reply?", LONG.replace("thirty", "fifteen"), id="g")
    gold = write(tmp_path / "golden.jsonl", [*golden_rows(), near])
    v = prepare(config(tmp_path, [src], [gold]), tiny_tokenizer, show_progress=False)
    leak = v.card["leakage"]
    assert (leak["count"], leak["exact"], leak["near"]) == (1, 0, 1)
    [pair] = leak["rows"]
    assert pair["kind"] == "near" and 0.85 <= pair["similarity"] < 1.0
    assert (pair["test"]["id"], pair["test"]["line"], pair["train"]["id"], pair["train"]["line"]) == ("g", 4, "t", 6)

    strict = prepare(config(tmp_path, [src], [gold], dedup={"threshold": 0.99}), tiny_tokenizer, show_progress=False)
    assert strict.card["leakage"]["count"] == 0  # the same threshold as dedup decides


def test_drop_from_train_removes_training_copies_but_never_test_rows(tmp_path, tiny_tokenizer):
    rows = distinct_rows(8)
    src = write(tmp_path / "tickets.jsonl", rows)
    gold = write(tmp_path / "golden.jsonl", [rows[2], rows[5], *golden_rows()])
    v = prepare(config(tmp_path, [src], [gold], leakage="drop_from_train"), tiny_tokenizer, show_progress=False)
    train = read(v.train_file)
    assert len(train) == 6 and rows[2] not in train and rows[5] not in train
    assert len(read(v.eval_file)) == 5
    assert v.card["dropped"]["leakage"] == 2 and v.card["rows_kept"] == 6 and v.card["train_rows"] == 6
    assert v.card["leakage"]["count"] == 0 and v.card["leakage"]["dropped_from_train"] == 2

    write(gold, rows)
    with pytest.raises(TailorError, match="no training rows left: all 8 duplicate an eval row"):
        prepare(config(tmp_path, [src], [gold], leakage="drop_from_train"), tiny_tokenizer, show_progress=False)


def test_random_split_leakage_is_checked_too(tmp_path, tiny_tokenizer):
    f = write(tmp_path / "d.jsonl", distinct_rows(20))
    v = prepare(config(tmp_path, [f], []), tiny_tokenizer, show_progress=False)
    assert v.card["eval_split"]["source"] == "random_split" and v.card["eval_split"]["eval_fraction"] == 0.15
    assert v.card["leakage"]["count"] == 0 and v.card["leakage"]["eval_rows"] == 3
    assert "From the random 15% of the curated rows (seed 42)." in (v.path / "card.md").read_text()

    # Dedup off and every row four times: each held-out row still has copies in train.
    dup = write(tmp_path / "dup.jsonl", distinct_rows(5) * 4)
    off = prepare(config(tmp_path, [dup], [], dedup={"enabled": False}), tiny_tokenizer, show_progress=False)
    assert off.card["eval_rows"] == 3 and off.card["leakage"]["count"] == 3 and off.card["leakage"]["exact"] == 3


def test_test_rows_are_redacted_like_training_rows(tmp_path, tiny_tokenizer, monkeypatch):
    from collections import Counter
    from dataclasses import replace

    import llmtailor.data.redact as redact

    seen: list[str] = []

    def fake_redact(rows, cfg, advance=None, protect=frozenset()):
        out = []
        for r in rows:
            seen.append(r.source)
            text = r.messages[-1]["content"]
            if "ann@corp.com" in text:
                r = replace(r, messages=[*r.messages[:-1], {"role": "assistant", "content": text.replace(
                    "ann@corp.com", "<EMAIL>")}])
            out.append(r)
        return out, Counter({"EMAIL_ADDRESS": 2}), 2

    monkeypatch.setattr(redact, "redact_rows", fake_redact)
    monkeypatch.setattr(redact, "count_unique", lambda rows: len(rows))
    src = write(tmp_path / "tickets.jsonl", [*distinct_rows(5), chat("Who?", "Mail ann@corp.com")])
    gold = write(tmp_path / "golden.jsonl", [chat("Contact?", "Write to ann@corp.com today.")])
    v = prepare(config(tmp_path, [src], [gold], pii={"enabled": True}), tiny_tokenizer, show_progress=False)
    assert seen == ["tickets"] * 6 + ["golden"]  # one pass over both
    assert read(v.eval_file)[0]["messages"][-1]["content"] == "Write to <EMAIL> today."
    assert "ann@corp.com" not in v.eval_file.read_text() + v.train_file.read_text()
    assert v.card["eval_split"]["pii_rows_changed"] == 1 and v.card["pii_rows_changed"] == 2


def test_find_matches_uses_dedup_rules():
    text = " ".join(f"w{i}" for i in range(60))

    def row(answer: str, system: str | None = None) -> Row:
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]
        return Row(([{"role": "system", "content": system}] if system else []) + msgs)

    train = [row("unrelated answer about printers"), row(text), row(text)]
    tests = [row(text.upper()), row(text.replace("w30", "zz")), row(text.replace("w30", "zz"), "Persona."), row("x")]
    matches = find_matches(train, tests, DedupConfig())
    assert [(m.query, m.reference, m.kind) for m in matches] == [(0, 1, "exact"), (1, 1, "near")]
    assert 0.85 <= matches[1].similarity < 1
    assert find_matches(train, tests, DedupConfig(threshold=0.99))[1:] == []
    assert find_matches([], tests, DedupConfig()) == []
