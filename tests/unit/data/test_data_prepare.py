"""The prepare pipeline on the tiny tokenizer (PII off here; Presidio is tested in test_data_pii.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.data import DataConfig
from llmtailor.data.prepare import prepare
from llmtailor.data.rows import Row
from llmtailor.data.split import split_rows
from llmtailor.errors import TailorError

TOPICS = ["billing", "login", "refund", "shipping", "printer", "vpn", "invoice", "password", "laptop", "email"]


def chat(q: str, a: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **extra}


def distinct_rows(n: int) -> list[dict]:
    return [
        chat(f"Question {i} about {TOPICS[i % 10]} number {i * 7}?", f"Answer {i}: see {TOPICS[(i * 3) % 10]}.")
        for i in range(n)
    ]


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path: Path, *files: Path, **kw) -> DataConfig:
    kw.setdefault("pii", {"enabled": False})
    kw.setdefault("max_seq_len", 2048)
    return DataConfig(sources=[str(f) for f in files], output_dir=tmp_path / "datasets", **kw)


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_writes_version_folder_and_card(tmp_path, tiny_tokenizer):
    a = write(tmp_path / "tickets.jsonl", [*distinct_rows(18), {"messages": []}, "{bad"])
    b = write(tmp_path / "faq.jsonl", [{"instruction": "Hi", "output": "Hello!", "id": "x"}])
    cfg = config(tmp_path, a, b, system_prompt="You are the help desk.")
    v = prepare(cfg, tiny_tokenizer, show_progress=False)
    assert not v.reused and v.path == tmp_path / "datasets" / v.hash
    assert sorted(p.name for p in v.path.iterdir()) == ["card.json", "card.md", "eval.jsonl", "train.jsonl"]
    train, evals = read(v.train_file), read(v.eval_file)
    assert len(train) + len(evals) == 19 and len(evals) == 3  # round(19 * 0.15)
    assert all(r["messages"][0] == {"role": "system", "content": "You are the help desk."} for r in train + evals)
    assert {
        "id": "x",
        "messages": [
            {"role": "system", "content": "You are the help desk."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
    } in train + evals

    card = json.loads((v.path / "card.json").read_text())
    assert card == v.card
    assert card["hash"] == v.hash
    assert card["rows_in"] == 21 and card["rows_kept"] == 19
    assert card["dropped"] == {
        "invalid: empty_messages": 1,
        "invalid: malformed_json": 1,
        "overlength": 0,
        "exact_dup": 0,
        "near_dup": 0,
    }
    assert [(s["name"], s["rows"], s["rows_kept"]) for s in card["sources"]] == [("tickets", 20, 18), ("faq", 1, 1)]
    assert card["system_prompt_added"] == 19 and card["converted_alpaca"] == 1
    assert (card["train_rows"], card["eval_rows"]) == (16, 3)
    assert card["errors"] == [
        f"{a}:19: messages: is empty",
        f"{a}:20: malformed JSON (Expecting property name enclosed in double quotes at column 2)",
    ]
    assert card["errors_total"] == 2
    lengths = sorted(
        len(tiny_tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
        for r in train + evals
    )
    t = card["token_lengths"]
    assert (t["min"], t["max"], t["total"]) == (lengths[0], lengths[-1], sum(lengths))
    assert t["min"] <= t["p50"] <= t["p95"] <= t["max"]
    assert sum(t["histogram"]["counts"]) == 19 and len(t["histogram"]["edges"]) == 11
    assert card["config"]["system_prompt"] == "You are the help desk."
    assert card["pii_enabled"] is False and card["pii_counts"] == {}
    assert set(card) >= {"created", "truncated", "tokenizer", "pii_rows_changed"}
    md = (v.path / "card.md").read_text()
    assert v.hash in md and "| invalid: malformed_json | 1 |" in md and "| tickets |" in md


def test_same_input_reuses_version_and_changed_input_makes_a_new_one(tmp_path, tiny_tokenizer):
    f = write(tmp_path / "d.jsonl", distinct_rows(10))
    cfg = config(tmp_path, f)
    first = prepare(cfg, tiny_tokenizer, show_progress=False)
    stamp = (first.path / "train.jsonl").stat().st_mtime_ns
    again = prepare(cfg, tiny_tokenizer, show_progress=False)
    assert again.reused and again.hash == first.hash and again.path == first.path
    assert again.card == first.card
    assert (first.path / "train.jsonl").stat().st_mtime_ns == stamp

    # key order and spacing are not changes
    f.write_text(
        "".join(json.dumps(r, indent=None, separators=(", ", ": "), sort_keys=True) + "\n" for r in distinct_rows(10))
    )
    assert prepare(cfg, tiny_tokenizer, show_progress=False).hash == first.hash

    write(f, distinct_rows(11))
    changed = prepare(cfg, tiny_tokenizer, show_progress=False)
    assert not changed.reused and changed.hash != first.hash
    assert (first.path / "train.jsonl").stat().st_mtime_ns == stamp
    assert json.loads((first.path / "card.json").read_text())["rows_in"] == 10
    assert changed.card["rows_in"] == 11

    other = prepare(cfg.model_copy(update={"max_seq_len": 1024}), tiny_tokenizer, show_progress=False)
    assert other.hash not in (first.hash, changed.hash)
    moved = cfg.model_copy(update={"output_dir": tmp_path / "elsewhere"})
    assert prepare(moved, tiny_tokenizer, show_progress=False).hash == changed.hash


def test_overlength_drop_vs_truncate(tmp_path, tiny_tokenizer):
    long_answer = "The customer cannot log in to the portal after the password reset. " * 20
    rows = [*distinct_rows(5), chat("Why can I not log in?", long_answer), chat("x " * 300, "short")]
    f = write(tmp_path / "d.jsonl", rows)

    dropped = prepare(config(tmp_path, f, max_seq_len=96), tiny_tokenizer, show_progress=False)
    assert dropped.card["dropped"]["overlength"] == 2 and dropped.card["rows_kept"] == 5
    assert dropped.card["truncated"] == 0
    assert [e.line for e in dropped.errors] == [6, 7] and "tokens > max_seq_len 96" in dropped.errors[0].problem

    cut = prepare(config(tmp_path, f, max_seq_len=96, overlength="truncate"), tiny_tokenizer, show_progress=False)
    assert cut.card["truncated"] == 1 and cut.card["dropped"]["overlength"] == 1 and cut.card["rows_kept"] == 6
    assert "prompt alone does not fit" in cut.errors[0].problem and cut.errors[0].line == 7
    [row] = [r for r in read(cut.train_file) + read(cut.eval_file) if r["messages"][0]["content"].startswith("Why")]
    answer = row["messages"][-1]["content"]
    assert len(answer) > 20 and long_answer.startswith(answer)
    n = len(tiny_tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
    assert n <= 96
    assert cut.card["token_lengths"]["max"] <= 96


def test_exact_and_near_duplicates_are_removed_keeping_the_first(tmp_path, tiny_tokenizer):
    words = (
        "our support team answers every ticket within one business day and escalates urgent outages "
        "to the on call engineer who posts updates on the status page every thirty minutes until the "
        "incident is resolved and a written summary is shared with all affected customers afterwards"
    )
    answer = words + " so please check the status page first"
    near = answer.replace("thirty", "fifteen")
    rows = [
        chat("How fast do you reply?", answer, id="first"),
        chat("How  fast do you REPLY?", answer, id="exact"),  # case and spacing only
        chat("How fast do you reply?", near, id="near"),  # one word differs
        chat("How do I change my billing address on the account page?", "Open settings, then billing.", id="other"),
    ]
    f = write(tmp_path / "d.jsonl", rows)
    v = prepare(config(tmp_path, f, split={"eval_fraction": 0.34}), tiny_tokenizer, show_progress=False)
    kept = {r["id"] for r in read(v.train_file) + read(v.eval_file)}
    assert kept == {"first", "other"}
    assert v.card["dropped"]["exact_dup"] == 1 and v.card["dropped"]["near_dup"] == 1
    # Each dropped copy is listed with its file:line and the row it copies (lines 2 and 3 copy line 1).
    listed = {(d["line"], d["kind"], d["copy_of"]) for d in v.card["duplicates"]}
    assert listed == {(2, "exact", f"{f}:1"), (3, "near", f"{f}:1")} and v.card["duplicates_total"] == 2
    near = next(d for d in v.card["duplicates"] if d["kind"] == "near")
    assert 0.8 <= near["similarity"] < 1.0 and near["file"] == str(f)
    card_md = (v.path / "card.md").read_text()
    assert f"`{f}:2`: exact copy (similarity 1.0) of `{f}:1`" in card_md

    off = prepare(config(tmp_path, f, dedup={"enabled": False}), tiny_tokenizer, show_progress=False)
    assert off.card["rows_kept"] == 4


def test_near_dedup_respects_threshold_and_system_prompt():
    from llmtailor.data.config import DedupConfig
    from llmtailor.data.dedup import near_dedup

    text = " ".join(f"w{i}" for i in range(60))
    base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]
    variant = [{"role": "user", "content": "q"}, {"role": "assistant", "content": text.replace("w30", "zz")}]
    sys_variant = [{"role": "system", "content": "Other persona."}, *variant]
    rows = [Row(base), Row(variant), Row(sys_variant)]
    kept, n = near_dedup(rows, DedupConfig(threshold=0.85))
    assert [r.messages for r in kept] == [base, sys_variant] and n == 1
    kept, n = near_dedup(rows, DedupConfig(threshold=0.99))
    assert len(kept) == 3 and n == 0


def test_split_is_deterministic_and_sized():
    rows = [Row([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]) for i in range(200)]
    train, evals = split_rows(rows, 0.15, seed=42)
    assert len(evals) == 30 and len(train) == 170
    assert {id(r) for r in train} | {id(r) for r in evals} == {id(r) for r in rows}
    again_train, again_evals = split_rows(list(reversed(rows)), 0.15, seed=42)
    assert {r.messages[0]["content"] for r in again_evals} == {r.messages[0]["content"] for r in evals}
    _, other = split_rows(rows, 0.15, seed=7)
    assert {r.messages[0]["content"] for r in other} != {r.messages[0]["content"] for r in evals}
    assert [len(split_rows(rows[:n], 0.15, 1)[1]) for n in (0, 1, 2, 3, 10)] == [0, 0, 1, 1, 2]


def test_eval_fraction_is_validated():
    with pytest.raises(ValueError, match="eval_fraction"):
        DataConfig(split={"eval_fraction": 0.9})
    with pytest.raises(ValueError, match="extra"):
        DataConfig(dedupe={})


def test_plain_string_and_object_sources():
    cfg = DataConfig(sources=["a.jsonl", {"path": "b/c.jsonl", "format": "alpaca", "name": "faq"}])
    assert [(s.path, s.format, s.label) for s in cfg.sources] == [
        (Path("a.jsonl"), "auto", "a"),
        (Path("b/c.jsonl"), "alpaca", "faq"),
    ]


def test_missing_source_names_the_path(tmp_path, tiny_tokenizer):
    with pytest.raises(TailorError, match="missing.jsonl: data file not found"):
        prepare(config(tmp_path, tmp_path / "missing.jsonl"), tiny_tokenizer, show_progress=False)
    assert not (tmp_path / "datasets").exists()


def test_no_usable_rows_is_an_error(tmp_path, tiny_tokenizer):
    f = write(tmp_path / "d.jsonl", [{"messages": []}])
    with pytest.raises(TailorError, match=r"no usable rows: 1 invalid.*messages: is empty"):
        prepare(config(tmp_path, f), tiny_tokenizer, show_progress=False)


def test_interrupted_write_leaves_no_version_folder(tmp_path, tiny_tokenizer, monkeypatch):
    import llmtailor.data.versions as versions

    f = write(tmp_path / "d.jsonl", distinct_rows(10))
    cfg = config(tmp_path, f)

    def boom(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(versions, "write_json", boom)  # train/eval are written, then the card fails
    with pytest.raises(OSError, match="disk full"):
        prepare(cfg, tiny_tokenizer, show_progress=False)
    out = tmp_path / "datasets"
    assert list(out.iterdir()) == []

    monkeypatch.undo()
    v = prepare(cfg, tiny_tokenizer, show_progress=False)
    assert not v.reused and [p.name for p in out.iterdir()] == [v.hash]


def test_progress_goes_to_stderr_only(tmp_path, tiny_tokenizer, capsys):
    f = write(tmp_path / "d.jsonl", distinct_rows(6))
    prepare(config(tmp_path, f), tiny_tokenizer, show_progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""


def test_rows_grown_by_redaction_are_measured_again(tmp_path, tiny_tokenizer, monkeypatch):
    """A placeholder can be longer than the text it replaced; such rows go through the length policy again."""
    from collections import Counter
    from dataclasses import replace

    import llmtailor.data.redact as redact

    def fake_redact(rows, cfg, advance=None, protect=frozenset()):
        out = []
        for r in rows:
            last = r.messages[-1]["content"]
            if "secret" in last:
                r = replace(
                    r,
                    messages=[
                        *r.messages[:-1],
                        {"role": "assistant", "content": last.replace("secret", "<PERSON> " * 60)},
                    ],
                )
            out.append(r)
        return out, Counter({"PERSON": 1}), 1

    monkeypatch.setattr(redact, "redact_rows", fake_redact)
    monkeypatch.setattr(redact, "count_unique", lambda rows: 1)
    f = write(tmp_path / "d.jsonl", [*distinct_rows(5), chat("Who?", "the secret")])
    v = prepare(config(tmp_path, f, max_seq_len=128, pii={"enabled": True}), tiny_tokenizer, show_progress=False)
    assert v.card["dropped"]["overlength"] == 1 and v.card["rows_kept"] == 5
    assert v.card["pii_counts"]["PERSON"] == 1 and v.card["pii_rows_changed"] == 1
    assert v.card["token_lengths"]["max"] <= 128
