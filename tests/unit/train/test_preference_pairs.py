"""Building preference pairs: the rule ranks schema validity, then fields, then token F1; the sampler and the CLI
write a file that the DPO loader accepts, with counts."""

import json
from pathlib import Path

from llmtailor.config import TailorConfig
from llmtailor.data.preference_pairs import build_preferences, make_pair, score_answer
from llmtailor.data.preferences import load_preferences

SCHEMA = {"type": "object", "required": ["category", "priority"],
          "properties": {"category": {"enum": ["billing", "login"]}, "priority": {"enum": ["low", "high"]}}}
REF = json.dumps({"category": "billing", "priority": "high"})
PROMPT = [{"role": "user", "content": "my invoice is wrong"}]


def test_rule_order_schema_then_fields_then_f1():
    valid_wrong = json.dumps({"category": "login", "priority": "low"})
    invalid_right_fields = json.dumps({"category": "billing", "priority": "urgent"})
    one_field = json.dumps({"category": "billing", "priority": "low"})
    assert score_answer(valid_wrong, REF, SCHEMA) > score_answer(invalid_right_fields, REF, SCHEMA)
    assert score_answer(one_field, REF, SCHEMA) > score_answer(valid_wrong, REF, SCHEMA)
    assert score_answer("billing high", "billing high please", None) > score_answer("nothing", "billing high", None)

    pair, gold = make_pair(PROMPT, [valid_wrong, "not json", one_field], REF, SCHEMA, gold_as_chosen=False)
    assert (pair["chosen"], pair["rejected"], gold) == (one_field, "not json", False)
    pair, gold = make_pair(PROMPT, [valid_wrong, "not json", one_field], REF, SCHEMA, gold_as_chosen=True)
    assert (pair["chosen"], pair["rejected"], gold) == (REF, "not json", True)
    assert make_pair(PROMPT, ["same", " same "], None, None, gold_as_chosen=True) == (None, False)
    assert make_pair(PROMPT, [REF, REF], REF, SCHEMA, gold_as_chosen=True) == (None, False)  # already perfect


def test_build_from_sampled_answers_writes_loadable_pairs(tmp_path, tiny_model, tiny_tokenizer):
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(SCHEMA))
    cfg = TailorConfig.model_validate({
        "model": {"device": "cpu"}, "eval": {"json_schema": str(schema_file)},
        "preference": {"samples": 3, "max_new_tokens": 6, "out": str(tmp_path / "prefs.jsonl")}})
    rows = [{"messages": [*PROMPT, {"role": "assistant", "content": REF}]},
            {"messages": [{"role": "user", "content": "cannot log in"},
                          {"role": "assistant", "content": json.dumps({"category": "login", "priority": "low"})}]},
            {"messages": [{"role": "user", "content": "no answer here"}]}]
    stats = build_preferences(cfg, rows, tiny_model, tiny_tokenizer)
    # A random model never writes valid JSON: every prompt pairs the reference with one of its own answers.
    assert stats.prompts == 2 and stats.answers == 6 and stats.pairs == 2 and stats.gold_chosen == 2
    loaded = load_preferences(Path(stats.out))
    assert [r.chosen for r in loaded] == [REF, rows[1]["messages"][1]["content"]]
    assert all(r.rejected != r.chosen for r in loaded)


def test_eval_runs_on_a_merged_run(tmp_path, tiny_model_dir):
    """A merged run is evaluated like a trained one: the ladder reads its model/ folder and dataset version."""
    from llmtailor.eval.evaluate import evaluate
    from llmtailor.io import write_jsonl
    from llmtailor.merge.adapters import merge
    from tests.unit.test_merge_adapters import make_run
    from tests.unit.test_train import rows

    ds = tmp_path / "ds"
    write_jsonl(ds / "train.jsonl", rows(4))
    write_jsonl(ds / "eval.jsonl", rows(2))
    run = make_run(tmp_path / "runs", "run-a", tiny_model_dir)
    info = json.loads((run / "run.json").read_text())
    info["dataset_dir"] = str(ds)
    (run / "run.json").write_text(json.dumps(info))
    cfg = TailorConfig.model_validate({
        "runs_dir": str(tmp_path / "runs"), "registry": {"enabled": False},
        "model": {"base_model": str(tiny_model_dir), "device": "cpu", "precision": "fp32"},
        "eval": {"max_new_tokens": 4, "metrics": ["token_f1"], "variants": ["base", "tuned"]}})
    merged = merge(cfg, ["run-a"], into_base=True)
    result = evaluate(cfg, merged.run_dir, show_progress=False)
    assert set(result.variants) >= {"base", "tuned"}
    assert (merged.run_dir / "eval" / "results.json").exists()
