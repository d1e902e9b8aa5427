"""Train/test leakage as a gate: `data.leakage` parsed at config load, read from the dataset card, in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.config import TailorConfig, parse_config
from llmtailor.data import DataConfig
from llmtailor.data.leakage import NO_CHECK, leakage_results
from llmtailor.data.prepare import prepare
from llmtailor.errors import ConfigError
from llmtailor.eval.gates import check_gates, parse_gate
from tests.unit.eval.conftest import label_rows


def golden_run(tmp_path: Path, tokenizer, *, identical: bool) -> Path:
    """A run folder whose dataset version has a golden test set, identical to the training rows or not."""
    train = tmp_path / "train.jsonl"
    gold = tmp_path / "golden.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in label_rows(8)), encoding="utf-8")
    tests = label_rows(8) if identical else label_rows(4, offset=100)
    gold.write_text("".join(json.dumps(r) + "\n" for r in tests), encoding="utf-8")
    cfg = DataConfig(sources=[str(train)], test_sources=[str(gold)], output_dir=tmp_path / "datasets",
                     pii={"enabled": False}, max_seq_len=2048)
    version = prepare(cfg, tokenizer, show_progress=False)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "completed", "dataset_dir": str(version.path),
                                              "dataset_hash": version.hash}))
    return run


def test_data_gates_parse_and_typos_fail_at_config_load_with_the_line():
    assert parse_gate("data.leakage == 0").path == ("data", "leakage")
    assert parse_gate("data.near.leakage <= 2").path == ("data", "near", "leakage")
    TailorConfig.model_validate({"eval": {"gates": ["data.leakage == 0", "data.leakage_rate <= 0.01"]}})
    with pytest.raises(ValueError, match="did you mean 'data.leakage'"):
        parse_gate("leakage == 0")
    with pytest.raises(ConfigError) as e:
        parse_config("eval:\n  gates:\n    - 'json_compliance >= 0.9'\n    - 'data.leaks == 0'\n", Path("t.yaml"))
    # the gates list is checked as a whole: its line is the `gates:` key's (as for every gate typo)
    assert e.value.line == 2 and "data gates end in one of ['leakage', 'leakage_rate']" in str(e.value)


def test_data_gate_fails_when_leakage_was_not_checked():
    out = check_gates(["data.leakage == 0"], {"variants": {"tuned": {"accuracy": 1.0}}})
    assert not out[0]["passed"] and "no leakage check" in out[0]["reason"]
    out = check_gates(["data.leakage == 0"], {"data": leakage_results({"hash": "old"})})
    assert not out[0]["passed"] and out[0]["reason"] == NO_CHECK
    clean = {"leakage": {"count": 0, "rate": 0.0, "exact": 0, "near": 0}, "eval_split": {"source": "test_sources"}}
    out = check_gates(["data.leakage == 0", "data.leakage_rate < 0.01"], {"data": leakage_results(clean)})
    assert [g["passed"] for g in out] == [True, True] and out[0]["variant"] is None


def test_eval_carries_leakage_into_results_gates_and_report(tmp_path, tiny_tokenizer, models_factory):
    from llmtailor.eval.evaluate import evaluate
    from llmtailor.eval.report import write_report

    run = golden_run(tmp_path, tiny_tokenizer, identical=True)
    cfg = TailorConfig.model_validate({"runs_dir": str(run.parent), "eval": {
        "max_new_tokens": 2, "batch_size": 4, "max_examples": 2, "variants": ["base"], "metrics": ["exact_match"],
        "bootstrap": {"resamples": 100}, "gates": ["data.leakage == 0", "data.exact.leakage >= 8"]}})
    result = evaluate(cfg, run, show_progress=False, models=models_factory(cfg, run))
    res = json.loads(result.results_path.read_text())
    data = res["data"]
    assert data["status"] == "ok" and data["eval_source"] == "test_sources"
    assert data["gate_values"] == {"leakage": 8, "leakage_rate": 1.0, "exact.leakage": 8, "near.leakage": 0}
    assert [(g["text"], g["passed"]) for g in res["gates"]["results"]] == [
        ("data.leakage == 0", False), ("data.exact.leakage >= 8", True)]
    assert not result.gates_passed

    html = write_report(run).read_text()
    assert "Eval split and train/test leakage" in html
    assert "golden test set (data.test_sources), never trained on" in html
    assert "8 of 8 eval rows also occur in the training data (8 exact, 0 near duplicates)." in html
    assert "<code>golden.jsonl:3</code></td><td><code>train.jsonl:3</code>" in html


def test_gate_only_reads_leakage_from_the_card_for_older_results(tmp_path, tiny_tokenizer):
    from typer.testing import CliRunner

    from llmtailor.cli.main import app

    run = golden_run(tmp_path, tiny_tokenizer, identical=False)
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps({"variants": {"tuned": {"accuracy": 0.5}}}))
    (tmp_path / "tailor.yaml").write_text(
        f"runs_dir: {run.parent}\neval:\n  gates: ['data.leakage == 0', 'accuracy >= 0.9']\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", "-c", str(tmp_path / "tailor.yaml"), "--run", "r1", "--gate-only",
                                      "--json"])
    assert result.exit_code == 3, result.output
    out = json.loads(result.stdout)
    assert [(g["text"], g["passed"], g["value"]) for g in out["gates"]] == [
        ("data.leakage == 0", True, 0.0), ("accuracy >= 0.9", False, 0.5)]
    saved = json.loads((run / "eval" / "results.json").read_text())
    assert saved["data"]["leakage"]["eval_rows"] == 4
