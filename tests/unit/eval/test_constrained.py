"""`eval.constrained_decoding`: a `<variant>_constrained` twin decoded through the server's xgrammar path, beside the
free variant. With tiny random models the free answers are not JSON; the constrained ones always match the schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from llmtailor.config import TailorConfig
from llmtailor.errors import TailorError
from llmtailor.eval.advise import advise
from llmtailor.eval.evaluate import evaluate
from llmtailor.io import write_jsonl
from llmtailor.serve.structured import ResponseFormat, ResponseFormatError, StructuredOutput, enforceable_schema

SCHEMA = {"type": "object", "properties": {"category": {"type": "string", "enum": ["billing", "login", "shipping"]},
                                           "note": {"type": "string", "maxLength": 12}},
          "required": ["category", "note"], "additionalProperties": False}
CATS = ["billing", "login", "shipping"]


def json_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"id": f"j{i + offset}", "messages": [
        {"role": "system", "content": "Answer with JSON only."},
        {"role": "user", "content": f"ticket {i + offset}: " + "problem with " * (i % 3 + 1) + CATS[i % 3]},
        {"role": "assistant", "content": json.dumps({"category": CATS[i % 3], "note": "ok"})},
    ]} for i in range(n)]


@pytest.fixture()
def json_run(run_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    info = json.loads((run_dir / "run.json").read_text())
    write_jsonl(Path(info["dataset_dir"]) / "train.jsonl", json_rows(6))
    write_jsonl(Path(info["dataset_dir"]) / "eval.jsonl", json_rows(5, offset=100))
    schema = tmp_path / "small.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    return run_dir, schema


def cfg_for(run_dir: Path, **eval_cfg) -> TailorConfig:
    base = {"max_new_tokens": 48, "batch_size": 3, "bootstrap": {"resamples": 100}, "variants": ["base", "tuned"]}
    return TailorConfig.model_validate({"runs_dir": str(run_dir.parent), "eval": {**base, **eval_cfg}})


def test_constrained_twin_always_matches_the_schema_free_variant_does_not(json_run, models_factory):
    run_dir, schema = json_run
    cfg = cfg_for(run_dir, json_schema=str(schema), constrained_decoding=True,
                  gates=["json_compliance >= 0.9", "tuned_constrained.json_compliance >= 1"])
    result = evaluate(cfg, run_dir, show_progress=False, models=models_factory(cfg, run_dir))
    res = json.loads(result.results_path.read_text())
    assert list(res["variants"]) == ["base", "tuned", "tuned_constrained"]
    assert res["constrained_decoding"] == {"enabled": True, "engine": "xgrammar",
                                           "variants": {"tuned_constrained": "tuned"}, "not_enforced": []}
    examples = [json.loads(x) for x in (run_dir / "eval" / "examples.jsonl").read_text().splitlines()]

    def valid(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    assert len(examples) == 5 and all(valid(ex["outputs"]["tuned_constrained"]) for ex in examples)
    assert sum(valid(ex["outputs"]["tuned"]) for ex in examples) <= 1  # a random model does not write JSON
    tuned, twin = res["variants"]["tuned"], res["variants"]["tuned_constrained"]
    assert twin["json_compliance"] == 1.0 and tuned["json_compliance"] < 1.0 and twin["truncated"] == 0
    assert "eval_loss" in tuned and "eval_loss" not in twin  # same weights and prompt: not measured twice
    assert "tuned_constrained" in res["ladder"]["comparisons"] and "tuned_constrained" in res["vs_best"]["tests"] \
        or res["vs_best"]["best"] == "tuned_constrained"
    assert [g["passed"] for g in res["gates"]["results"]] == [False, True]
    out = advise(res)
    assert out["lines"][0].startswith("Do not ship: 1 gate failed (json_compliance ")
    assert any(line.startswith("Constrained decoding (tuned → tuned_constrained): JSON compliance ")
               and "→ 100%" in line for line in out["lines"])
    from llmtailor.eval.report import write_report

    assert "tuned_constrained" in write_report(run_dir).read_text()


def test_config_errors_name_the_fix(tmp_path: Path):
    with pytest.raises(Exception, match="constrained_decoding needs a JSON task with a schema"):
        TailorConfig.model_validate({"eval": {"constrained_decoding": True}})
    with pytest.raises(Exception, match="JSON tasks only, but eval.task is 'label'"):
        TailorConfig.model_validate({"eval": {"constrained_decoding": True, "json_schema": "s.json", "task": "label"}})
    with pytest.raises(Exception, match=r"\['tuned_rag'\] are not in eval.variants"):
        TailorConfig.model_validate({"eval": {"constrained_decoding": True, "json_schema": "s.json",
                                              "variants": ["base", "tuned"], "constrained_variants": ["tuned_rag"]}})
    with pytest.raises(Exception, match="constrained_decoding is false"):
        TailorConfig.model_validate({"eval": {"constrained_variants": ["tuned"]}})
    with pytest.raises(Exception, match="unknown variant 'tuned_constrained'"):
        TailorConfig.model_validate({"eval": {"constrained_decoding": True, "json_schema": "s.json",
                                              "constrained_variants": ["tuned_constrained"]}})


def test_budget_too_small_for_the_schema_fails_before_generating(json_run, models_factory):
    run_dir, schema = json_run
    cfg = cfg_for(run_dir, json_schema=str(schema), constrained_decoding=True, constrained_variants=["base"],
                  max_new_tokens=4)
    with pytest.raises(TailorError, match=r"eval.max_new_tokens=4 is too small"):
        evaluate(cfg, run_dir, show_progress=False, models=models_factory(cfg, run_dir))
    assert not (run_dir / "eval" / "results.json").exists()


def test_conditionals_are_dropped_and_allof_merged_for_the_grammar(tiny_tokenizer, tiny_model):
    demo = json.loads((Path(__file__).parents[3] / "llmtailor/assets/demo/ticket.schema.json").read_text())
    relaxed, dropped, unmerged = enforceable_schema(demo)
    assert "allOf" not in relaxed and len(dropped) == 10 and unmerged == []
    assert relaxed["properties"] == demo["properties"] and relaxed["required"] == demo["required"]
    named_if = {"type": "object", "properties": {"if": {"type": "boolean"}}, "allOf": [{"required": ["if"]}]}
    assert enforceable_schema(named_if)[0] == {"type": "object", "properties": {"if": {"type": "boolean"}},
                                               "required": ["if"]}
    so = StructuredOutput.for_model(tiny_model, tiny_tokenizer, [tiny_tokenizer.eos_token_id])
    overlap = {"type": "object", "properties": {"a": {"type": "boolean"}},
               "allOf": [{"properties": {"a": {"const": True}}}]}
    with pytest.raises(ResponseFormatError, match="allOf at #/allOf overlaps"):
        so.compile(ResponseFormat("json_schema", overlap))
