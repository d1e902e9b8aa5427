"""Mixing by origin: ratios validated with the YAML line, human rows anchor the mix, the card shows planned vs
achieved, only human rows are held out, and a generated row never evicts a human one in dedup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmtailor.config import load_config
from llmtailor.data.mix import MixConfig, mix_rows
from llmtailor.data.prepare import prepare
from llmtailor.data.rows import Row
from llmtailor.errors import ConfigError
from llmtailor.io import write_jsonl


def row(text: str, origin: str | None = None) -> Row:
    extra = {"origin": origin} if origin else {}
    return Row([{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}], extra)


def test_ratios_must_sum_to_one_error_names_the_field_and_line(tmp_path):
    path = tmp_path / "tailor.yaml"
    path.write_text("data:\n  sources: [a.jsonl]\n  mix:\n    ratios: {human: 0.7, synthetic: 0.2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == "data.mix.ratios" and err.value.line == 4
    assert "must sum to 1, got 0.9 (human 0.7 + synthetic 0.2)" in str(err.value)


@pytest.mark.parametrize("ratios, message", [
    ({"human": 0.0, "synthetic": 1.0}, "human must be above 0"),
    ({"human": 1.2, "synthetic": -0.2}, "between 0 and 1"),
    ({"human": 0.9, "robots": 0.1}, "robots"),
])
def test_bad_ratios(ratios, message):
    with pytest.raises(ValueError, match=message):
        MixConfig(ratios=ratios)


def test_default_is_the_seeds_recipe():
    assert MixConfig().ratios == {"human": 0.7, "synthetic": 0.2, "adversarial": 0.1}


def test_mix_keeps_every_human_row_and_samples_others_to_their_share():
    rows = [row(f"h{i}") for i in range(70)] + [row(f"s{i}", "synthetic") for i in range(50)]
    rows += [row(f"a{i}", "adversarial") for i in range(4)]
    kept, report = mix_rows(rows, MixConfig())
    used = report["used"]
    assert used == {"human": 70, "synthetic": 20, "adversarial": 4, "refusal": 0}
    assert report["dropped_by_mix"] == 30 and len(kept) == 94
    assert report["achieved"]["human"] == round(70 / 94, 4)
    assert any("adversarial: 6 rows short" in n for n in report["notes"])
    assert any("refusal share" in n for n in report["notes"])
    # deterministic, and independent of input order
    again, _ = mix_rows(list(reversed(rows)), MixConfig())
    assert {r.messages[0]["content"] for r in again} == {r.messages[0]["content"] for r in kept}


def test_refusal_share_in_range_has_no_note():
    cfg = MixConfig(ratios={"human": 0.6, "synthetic": 0.2, "adversarial": 0.1, "refusal": 0.1})
    rows = [row(f"h{i}") for i in range(60)] + [row(f"s{i}", "synthetic") for i in range(20)]
    rows += [row(f"a{i}", "adversarial") for i in range(10)] + [row(f"r{i}", "refusal") for i in range(10)]
    _, report = mix_rows(rows, cfg)
    assert report["achieved"] == {"human": 0.6, "synthetic": 0.2, "adversarial": 0.1, "refusal": 0.1}
    assert report["notes"] == []


def chat(text: str, answer: str = '{"a": 1}', **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}], **extra}


def test_prepare_mixes_records_card_and_holds_out_only_human_rows(tmp_path, tiny_tokenizer):
    humans = [chat(f"human question number {i} about the invoice {i * 7}") for i in range(20)]
    synthetic = [chat(f"evolved question {i} with a new constraint {i * 3}", origin="synthetic") for i in range(30)]
    synthetic.append(chat("human question number 3 about the invoice 21", origin="synthetic"))  # copies a human row
    refusals = [chat(f"how do I break into account {i}", "I can't help with that.") for i in range(5)]
    bad = [chat("origin typo", origin="synthtic")]
    write_jsonl(tmp_path / "human.jsonl", humans)
    write_jsonl(tmp_path / "synthetic.jsonl", synthetic + bad)
    write_jsonl(tmp_path / "refusals.jsonl", refusals)
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump({"data": {
        "sources": [{"path": "synthetic.jsonl"}, "human.jsonl", {"path": "refusals.jsonl", "origin": "refusal"}],
        "max_seq_len": 1024, "pii": {"enabled": False}, "split": {"eval_fraction": 0.2},
        "mix": {"ratios": {"human": 0.7, "synthetic": 0.2, "refusal": 0.1}}}}))
    cfg = load_config(path)
    version = prepare(cfg.data, tiny_tokenizer, show_progress=False)
    card = version.card
    train = [json.loads(x) for x in (version.path / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (version.path / "eval.jsonl").read_text().splitlines()]
    assert all(r.get("origin", "human") == "human" for r in evals) and len(evals) == 4
    mix = card["mix"]
    assert mix["used"] == {"human": 16, "synthetic": 5, "adversarial": 0, "refusal": 2}  # 16 / 0.7 = 22.9 rows
    assert mix["planned"]["human"] == 0.7 and len(train) == 23
    assert card["dropped"]["invalid: bad_origin"] == 1 and card["dropped"]["exact_dup"] == 1
    # The duplicate kept is the human row, although the synthetic file is listed first.
    kept = [r for r in train + evals if r["messages"][0]["content"] == "human question number 3 about the invoice 21"]
    assert len(kept) == 1 and kept[0].get("origin", "human") == "human"
    assert "## Mix by origin" in (version.path / "card.md").read_text()

    # Changing a ratio or a source's origin makes a new version.
    raw = yaml.safe_load(path.read_text())
    raw["data"]["mix"]["ratios"] = {"human": 0.8, "synthetic": 0.1, "refusal": 0.1}
    path.write_text(yaml.safe_dump(raw))
    assert prepare(load_config(path).data, tiny_tokenizer, show_progress=False).hash != version.hash


def test_without_mix_hash_and_split_are_unchanged(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "human.jsonl", [chat(f"question {i} about shipping {i * 5}") for i in range(10)])
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": ["human.jsonl"], "pii": {"enabled": False}}}))
    version = prepare(load_config(path).data, tiny_tokenizer, show_progress=False)
    assert "mix" not in version.card and version.card["origins"]["train"] == {"human": version.card["train_rows"]}
    assert "mix" not in json.dumps(version.card["config"]) or version.card["config"].get("mix") is None
    assert Path(version.path / "train.jsonl").exists()
