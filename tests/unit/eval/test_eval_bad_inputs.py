"""Bad input during evaluation: a clear message, and the results measured so far are kept.

Covered elsewhere: rows without a reference (test_ladder, test_eval_metrics, test_eval_rag), a schema that is not a
valid JSON Schema and an empty eval set (test_ladder), unreachable / unparseable judges at the row level
(test_judge_safety). Here: the same failures through `evaluate`, a schema file that is not JSON, and answers cut
off by max_new_tokens.
"""

from __future__ import annotations

import json

import pytest

from llmtailor.errors import RowError
from llmtailor.eval.evaluate import evaluate
from llmtailor.eval.metrics import load_schema
from tests.unit.eval.test_ladder import cfg_for


def test_schema_file_that_is_not_json_names_file_and_line(tmp_path):
    bad = tmp_path / "ticket.schema.json"
    bad.write_text('{\n  "type": "object",\n  "properties": {,}\n}\n')
    with pytest.raises(RowError, match=r"ticket\.schema\.json:3: malformed JSON") as e:
        load_schema(bad)
    assert e.value.line == 3
    bad.write_text("[1, 2]")
    with pytest.raises(Exception, match="must be an object, got list"):
        load_schema(bad)


@pytest.mark.parametrize("kind", ["unreachable", "unparseable"])
def test_judge_failures_keep_the_ladder_and_say_why(run_dir, models_factory, kind):
    judge_cfg = {"enabled": True, "base_url": "http://127.0.0.1:9/v1", "retries": 0, "timeout_s": 2,
                 "max_examples": 2}
    cfg = cfg_for(run_dir, variants=["base", "tuned"], judge=judge_cfg, gates=["judge.win_rate >= 0.5"])
    judge = None if kind == "unreachable" else (lambda messages: "Both answers look fine to me.")
    said: list[str] = []
    result = evaluate(cfg, run_dir, show_progress=False, say=said.append, models=models_factory(cfg, run_dir),
                      judge=judge)
    res = json.loads(result.results_path.read_text())
    assert res["status"] == "complete" and set(res["variants"]) == {"base", "tuned"}  # the ladder is kept
    jd = res["judge"]
    assert jd["status"] == "failed" and jd["variants"]["tuned"]["n_failed"] == 2
    assert jd["variants"]["tuned"]["win_rate"] is None
    expected = "unreachable" if kind == "unreachable" else "unparseable judge output"
    assert expected in jd["reason"] and expected in jd["variants"]["tuned"]["failures"][0]["error"]
    assert any("judgement(s) failed for tuned" in s for s in said)
    gate = res["gates"]["results"][0]
    assert not gate["passed"] and "not measured" in gate["reason"]
    assert len((run_dir / "eval" / "judge.jsonl").read_text().splitlines()) == 2  # each failure logged

    from llmtailor.eval.report import write_report

    html = write_report(run_dir).read_text()
    assert "judge: every judgement failed" in html and "judge: None" not in html


def test_answers_cut_off_by_max_new_tokens_are_flagged(run_dir, models_factory, tiny_tokenizer, tiny_model):
    from llmtailor.generate import generate_detailed

    # The random model spends its budget on newlines: the text is empty once stripped, yet it was cut off.
    conv = [[{"role": "user", "content": "ticket 1: problem with billing"}]]
    cut = generate_detailed(tiny_model, tiny_tokenizer, conv, max_new_tokens=3)[0]
    assert cut.hit_limit and cut.text == ""
    cfg = cfg_for(run_dir, variants=["base"], max_new_tokens=3)
    said: list[str] = []
    result = evaluate(cfg, run_dir, show_progress=False, say=said.append, models=models_factory(cfg, run_dir))
    agg = result.variants["base"]
    assert agg["truncated"] == 6 and agg["truncated_rate"] == 1.0
    assert any("hit max_new_tokens=3" in s and "raise eval.max_new_tokens" in s for s in said)
    examples = [json.loads(x) for x in (run_dir / "eval" / "examples.jsonl").read_text().splitlines()]
    assert sum(e["scores"]["base"]["truncated"] for e in examples) == agg["truncated"]

    from llmtailor.eval.report import write_report

    assert "hit max tokens" in write_report(run_dir).read_text()
