"""Self-rehearsal rows: the model's own answers, cut-off answers dropped, kept for resume, never an eval item."""

import json
from pathlib import Path

import pytest

from llmtailor.errors import RowError, TailorError
from llmtailor.eval.regression import SUITE
from llmtailor.generate import generate_detailed
from llmtailor.io import read_jsonl, write_jsonl
from llmtailor.runs import read_run
from llmtailor.train import rehearsal
from llmtailor.train.sft import train
from tests.unit.test_train import Interrupt, dataset, make_cfg  # noqa: F401  (fixture)


def test_rows_are_the_models_own_greedy_answers_and_cut_offs_are_dropped(tmp_path, tiny_model, tiny_tokenizer):
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": f"tell me about item {i}"} for i in range(6)])
    rows, summary = rehearsal.build_rows(tiny_model, tiny_tokenizer, 4, prompts_path=prompts, max_new_tokens=12)
    assert summary["asked"] == 4 and summary["kept"] + summary["dropped_cut_off"] + summary["dropped_empty"] == 4
    # Same prompts answered directly: kept rows carry exactly those answers, and only uncut ones were kept.
    asked = [r["messages"][0]["content"] for r in rows]
    direct = generate_detailed(tiny_model, tiny_tokenizer, [[{"role": "user", "content": p}] for p in asked],
                               max_new_tokens=12)
    every = generate_detailed(tiny_model, tiny_tokenizer, [[{"role": "user", "content": f"tell me about item {i}"}]
                                                           for i in range(6)], max_new_tokens=12)
    usable = [g for g in every if (rehearsal.whole_sentences(g.text) if g.hit_limit else g.text.strip())]
    assert summary["kept"] <= len(usable)
    for row, gen in zip(rows, direct, strict=True):
        expected = rehearsal.whole_sentences(gen.text.strip()) if gen.hit_limit else gen.text.strip()
        assert row["messages"][1] == {"role": "assistant", "content": expected}
        assert row["origin"] == "rehearsal"


def test_cut_off_answers_end_at_a_whole_sentence_or_are_dropped(tmp_path, tiny_model, tiny_tokenizer):
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": f"write a long story number {i}"} for i in range(4)])
    # A random tiny model rarely ends its turn within 2 tokens, nor writes a whole sentence: cut off and dropped.
    rows, summary = rehearsal.build_rows(tiny_model, tiny_tokenizer, 4, prompts_path=prompts, max_new_tokens=2)
    gens = generate_detailed(tiny_model, tiny_tokenizer,
                             [[{"role": "user", "content": f"write a long story number {i}"}] for i in range(4)],
                             max_new_tokens=2)
    cut = [g for g in gens if g.hit_limit]
    assert summary["dropped_cut_off"] == sum(not rehearsal.whole_sentences(g.text) for g in cut)
    assert summary["trimmed_to_sentence"] == sum(bool(rehearsal.whole_sentences(g.text)) for g in cut)
    assert len(rows) == summary["kept"] and all(r["messages"][1]["content"] for r in rows)


def test_whole_sentences():
    assert rehearsal.whole_sentences("One. Two is cut") == "One."
    assert rehearsal.whole_sentences('He said "stop." Then he') == 'He said "stop."'
    assert rehearsal.whole_sentences("Version 3.5 is out! And then") == "Version 3.5 is out!"
    assert rehearsal.whole_sentences("no sentence end here") == ""


def test_bad_prompt_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(RowError) as err:
        rehearsal.load_prompts(bad)
    assert err.value.line == 2 and err.value.field == "prompt"
    with pytest.raises(TailorError, match="not found"):
        rehearsal.load_prompts(tmp_path / "missing.jsonl")


def test_training_mixes_rehearsal_rows_and_resume_reuses_them(tmp_path, tiny_model_dir, dataset):  # noqa: F811
    cfg = make_cfg(tmp_path, tiny_model_dir, max_steps=8, save_steps=4, rehearsal=6,
                   rehearsal_max_new_tokens=8)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, dataset, "h1", show_progress=False, callbacks=[Interrupt()])
    run_dir = next((tmp_path / "runs").iterdir())
    info = read_run(run_dir)
    kept = info["rehearsal"]["kept"]
    saved = [row for _, row in read_jsonl(run_dir / "rehearsal.jsonl")]
    assert len(saved) == kept
    stamp = (run_dir / "rehearsal.jsonl").stat().st_mtime_ns
    resumed = train(cfg, dataset, "h1", run_dir=run_dir, resume=True, show_progress=False)
    assert (run_dir / "rehearsal.jsonl").stat().st_mtime_ns == stamp  # not regenerated
    assert read_run(resumed.run_dir)["train_rows"] == 16 + kept


def test_shipped_prompts_are_not_regression_items():
    """Rehearsal must not train on the forgetting check's own questions (exact or near duplicates)."""
    from llmtailor.data.dedup import jaccard, shingles

    prompts = rehearsal.load_prompts()
    assert len(prompts) >= 48
    suite = [json.loads(line)["prompt"] for line in Path(SUITE).read_text().splitlines() if line.strip()]

    def grams(text: str) -> set[str]:
        return shingles(text.lower().replace("?", " ").replace(".", " ").split(), 2)

    worst = max(jaccard(grams(p), grams(q)) for p in prompts for q in suite)
    assert worst < 0.4, worst

