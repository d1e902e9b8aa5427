"""The ladder end to end with tiny random models, plus the statistics, labels, gates and advice it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.config import TailorConfig
from llmtailor.errors import ConfigError, TailorError
from llmtailor.eval.advise import advise
from llmtailor.eval.evaluate import evaluate
from llmtailor.eval.gates import check_gates, parse_gate
from llmtailor.eval.labels import detect_task, label_metrics, map_label
from llmtailor.eval.ladder import fewshot_prompt, pick_fewshot
from llmtailor.eval.stats import bootstrap_ci, paired_bootstrap
from llmtailor.io import write_jsonl
from tests.unit.eval.conftest import label_rows


def cfg_for(run_dir, **eval_cfg) -> TailorConfig:
    base = {"max_new_tokens": 6, "batch_size": 4, "fewshot_k": 2, "bootstrap": {"resamples": 200}}
    base.update(eval_cfg)
    return TailorConfig.model_validate({"runs_dir": str(run_dir.parent), "eval": base})


def test_ladder_runs_every_variant_on_the_same_rows(run_dir, models_factory):
    info = json.loads((run_dir / "run.json").read_text())
    rows = label_rows(7, offset=100)
    rows[6]["messages"] = rows[6]["messages"][:-1]  # a held-out row without a reference answer
    write_jsonl(Path(info["dataset_dir"]) / "eval.jsonl", rows)
    cfg = cfg_for(run_dir, variants=["base", "base_fewshot", "base_rag", "tuned"],
                  gates=["accuracy >= 0.9", "base.unscorable_rate <= 1", "redteam.refusal >= 0.5"])
    said: list[str] = []
    result = evaluate(cfg, run_dir, show_progress=False, say=said.append, models=models_factory(cfg, run_dir))
    res = json.loads(result.results_path.read_text())
    assert list(res["variants"]) == ["base", "base_fewshot", "tuned"]
    assert "base_rag" in res["skipped_variants"] and any("skipping base_rag" in s for s in said)
    assert res["task"] == "label" and res["status"] == "complete" and res["n_examples"] == 7
    assert res["missing_references"] == 1
    for agg in res["variants"].values():
        # Random models name no label: every row is unscorable, counted, and accuracy is 0, not NaN.
        assert agg["accuracy"] == 0.0 and agg["unscorable"] == 6
        assert agg["label_skipped"] == 1 and agg["skipped"]["exact_match"] == 1
        assert sum(map(sum, agg["confusion_matrix"]["matrix"])) == 6
        assert agg["ci"]["accuracy"] == [0.0, 0.0]
    assert set(res["ladder"]["comparisons"]) == {"base_fewshot", "tuned"}
    assert res["fewshot"]["k"] == 2
    gates = {g["text"]: g for g in res["gates"]["results"]}
    assert not gates["accuracy >= 0.9"]["passed"] and gates["base.unscorable_rate <= 1"]["passed"]
    assert not gates["redteam.refusal >= 0.5"]["passed"]
    assert "not run" in gates["redteam.refusal >= 0.5"]["reason"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["gates"]["passed"] is False and set(run["eval_summary"]) == set(res["variants"])
    examples = [json.loads(x) for x in (run_dir / "eval" / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 7 and set(examples[0]["outputs"]) == set(res["variants"])
    from llmtailor.eval.report import write_report

    html = write_report(run_dir).read_text()
    for part in ("Adaptation ladder", "Confusion matrix", "ex-table", "FAIL", "Skipped base_rag", "paired bootstrap"):
        assert part in html, part
    assert "<script src" not in html and "http://" not in html.split("<footer>")[0].replace("http://www.w3", "")
    assert "base = base_fewshot = tuned" in html  # every variant scored 0 accuracy: a tie, not an order


def test_regression_and_redteam_run_base_and_tuned(run_dir, models_factory):
    cfg = cfg_for(run_dir, variants=["base", "tuned"],
                  regression={"enabled": True, "max_items": 4, "max_new_tokens": 4},
                  redteam={"enabled": True, "max_probes": 7, "max_new_tokens": 4},
                  gates=["regression.drop <= 0.5", "redteam.over_refusal <= 0.5"])
    result = evaluate(cfg, run_dir, show_progress=False, models=models_factory(cfg, run_dir))
    reg, rt = result.results["regression"], result.results["redteam"]
    assert reg["n_items"] == 4 and set(reg["categories"]) == {"arithmetic", "knowledge", "instruction_following",
                                                             "summarisation"}
    assert reg["perplexity"]["base"] > 1 and reg["perplexity"]["base"] != reg["perplexity"]["tuned"]
    assert rt["n_probes"] == 7 and len(rt["categories"]) == 7
    assert result.gates_passed  # random models neither know nor refuse anything: no drop, no over-refusal
    assert len((run_dir / "eval" / "regression.jsonl").read_text().splitlines()) == 4


def test_empty_eval_set_and_invalid_schema_are_clear(run_dir, models_factory, tmp_path):
    bad = tmp_path / "bad.schema.json"
    bad.write_text('{"type": "objekt"}')
    cfg = cfg_for(run_dir, json_schema=str(bad))
    with pytest.raises(TailorError, match="invalid JSON Schema"):
        evaluate(cfg, run_dir, show_progress=False, models=models_factory(cfg, run_dir))
    info = json.loads((run_dir / "run.json").read_text())
    write_jsonl(Path(info["dataset_dir"]) / "eval.jsonl", [])
    cfg = cfg_for(run_dir)
    with pytest.raises(TailorError, match="empty eval set"):
        evaluate(cfg, run_dir, show_progress=False, models=models_factory(cfg, run_dir))


def test_variant_and_gate_typos_fail_at_config_load():
    with pytest.raises(Exception, match="unknown variant 'tuned_rga'"):
        TailorConfig.model_validate({"eval": {"variants": ["base", "tuned_rga"]}})
    with pytest.raises(Exception, match="did you mean 'json_compliance'"):
        TailorConfig.model_validate({"eval": {"gates": ["json_complience >= 0.9"]}})
    with pytest.raises(Exception, match="METRIC OP NUMBER"):
        TailorConfig.model_validate({"eval": {"gates": ["json_compliance => 0.9"]}})
    from llmtailor.config import parse_config

    with pytest.raises(ConfigError) as e:
        parse_config("eval:\n  gates:\n    - 'redteam.refusals >= 0.9'\n", Path("t.yaml"))
    assert e.value.line == 2 and "redteam gates end in one of" in str(e.value)


def test_gates_resolve_variants_namespaces_and_fields():
    results = {"variants": {"base": {"accuracy": 0.4}, "tuned": {"accuracy": 0.8, "field_accuracy": {"team": 0.9}}},
               "regression": {"status": "ok", "gate_values": {"drop": 0.02, "arithmetic.drop": 0.2}},
               "redteam": {"status": "skipped"}}
    out = check_gates(["accuracy >= 0.75", "base.accuracy >= 0.5", "field_accuracy.team > 0.85",
                       "regression.drop <= 0.05", "regression.arithmetic.drop <= 0.1", "redteam.refusal >= 0.9",
                       "tuned_rag.accuracy >= 0"], results)
    assert [g["passed"] for g in out] == [True, False, True, True, False, False, False]
    assert "not evaluated" in out[-1]["reason"]
    assert parse_gate("judge.tuned_rag.win_rate >= 0.5").path == ("judge", "tuned_rag", "win_rate")


def test_labels_map_free_text_and_count_unscorable():
    labels = ["card_arrival", "card", "refund"]
    assert map_label("Card arrival", labels) == "card_arrival"
    assert map_label("The intent is card_arrival.", labels) == "card_arrival"  # longest match wins
    assert map_label("refund or card?", labels) is None  # two labels: ambiguous
    agg, rows = label_metrics(["refund", "no idea", "card"], ["refund", "card", "card_arrival"], labels)
    assert agg["accuracy"] == pytest.approx(1 / 3) and agg["unscorable"] == 1
    assert rows[1]["label_pred"] == "(none)" and agg["confusion_matrix"]["columns"][-1] == "(none)"
    assert 0 < agg["macro_f1"] < 1
    assert detect_task(["a", "b", "a", "b"], False) == "label"
    assert detect_task(['{"x": 1}'], False) == "json" and detect_task(["a long free text answer here ok"], False) \
        == "text"


def test_bootstrap_is_seeded_and_paired_test_sees_real_differences():
    vals = [1.0] * 30 + [0.0] * 10
    assert bootstrap_ci(vals, seed=3) == bootstrap_ci(vals, seed=3)
    lo, hi = bootstrap_ci(vals, seed=3)
    assert lo < 0.75 < hi and 0.5 < lo and hi < 0.95
    a = [0.0] * 40
    b = [1.0] * 25 + [0.0] * 15
    res = paired_bootstrap(a, b, seed=1)
    assert res["significant"] and res["p_value"] < 0.01 and res["ci"][0] > 0
    noise = paired_bootstrap([1, 0] * 20, [0, 1] * 20, seed=1)
    assert not noise["significant"] and noise["diff"] == 0
    assert paired_bootstrap([None], [1.0]) is None and bootstrap_ci([]) is None


def test_fewshot_picks_are_deterministic_distinct_and_from_train():
    rows = label_rows(12)
    shots = pick_fewshot(rows, 3, seed=0)
    assert shots == pick_fewshot(rows, 3, seed=0)
    assert len({s["messages"][-1]["content"] for s in shots}) == 3
    prompt = rows[0]["messages"][:-1]
    conv = fewshot_prompt(prompt, shots)
    assert conv[0]["role"] == "system" and [m["role"] for m in conv[1:]] == ["user", "assistant"] * 3 + ["user"]


def test_advice_prefers_cheaper_variant_when_not_significantly_worse():
    results = {
        "headline_metric": "accuracy", "n_examples": 40,
        "variants": {"base": {"accuracy": 0.2, "json_compliance": 0.61}, "base_fewshot": {"accuracy": 0.78},
                     "tuned": {"accuracy": 0.8, "json_compliance": 0.99, "ci": {"accuracy": [0.7, 0.9]}}},
        "vs_best": {"best": "tuned", "tests": {"base": {"significant": True, "p_value": 0.001, "diff": -0.6},
                                               "base_fewshot": {"significant": False, "p_value": 0.6, "diff": -0.02}}},
        "ladder": {"comparisons": {"tuned": {"json_compliance": {"significant": True}}}},
        "regression": {"status": "ok", "drop": 0.1, "base": 0.5, "tuned": 0.4, "n_items": 20,
                       "categories": {"arithmetic": {"base": 0.5, "tuned": 0.2, "drop": 0.3}}},
    }
    out = advise(results)
    assert out["recommendation"] == "base_fewshot" and out["best"] == "tuned"
    text = " ".join(out["lines"])
    assert "not significantly below the best" in text and "61% (base) → 99% (tuned) (significant)" in text
    assert any("arithmetic" in w for w in out["warnings"])
