"""`tailor advise`: the verdict comes first. A failed gate means the first line says "Do not ship" (never "Ship"),
metrics on which the candidate loses to a cheaper variant come next, and --json says the same (ship, blocking)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from llmtailor.cli.main import app
from llmtailor.eval.advise import advise
from llmtailor.eval.gates import check_gates


def demo_like(gates: list[str]) -> dict:
    """The demo's shape: tuned wins field accuracy but loses schema compliance to few-shot prompting."""
    results = {
        "status": "complete", "headline_metric": "field_accuracy_mean", "n_examples": 40,
        "variants": {
            "base": {"field_accuracy_mean": 0.0, "json_compliance": 0.0, "token_f1": 0.19},
            "base_fewshot": {"field_accuracy_mean": 0.18, "json_compliance": 0.65, "token_f1": 0.63},
            "tuned": {"field_accuracy_mean": 0.49, "json_compliance": 0.25, "token_f1": 0.82,
                      "ci": {"field_accuracy_mean": [0.4, 0.58]}},
        },
        "vs_best": {"best": "tuned", "tests": {"base": {"significant": True, "p_value": 0.001, "diff": -0.49},
                                               "base_fewshot": {"significant": True, "p_value": 0.001, "diff": -0.31}}},
        "regression": {"status": "ok", "drop": 0.02, "base": 0.5, "tuned": 0.48, "n_items": 16, "categories": {},
                       "gate_values": {"drop": 0.02}},
    }
    results["gates"] = {"results": check_gates(gates, results)}
    return results


def test_failed_gate_opens_the_advice_and_a_loss_to_fewshot_comes_next():
    out = advise(demo_like(["json_compliance >= 0.9", "regression.drop <= 0.15"]))
    lines = out["lines"]
    assert lines[0] == "Do not ship: 1 gate failed (json_compliance 0.25 < 0.9)."
    assert lines[1] == "tuned is worse than the cheaper base_fewshot on JSON compliance: 0.25 vs 0.65."
    assert lines[2].startswith("Candidate once the gates pass, tuned: the fine-tuned model has the best field")
    assert not any(line.startswith("Ship") for line in lines)
    assert out["levels"][:3] == ["block", "caution", "info"] and len(out["levels"]) == len(lines)
    assert not any("gate" in w.lower() for w in out["warnings"])  # said first, not repeated at the bottom
    assert out["ship"] is False and out["recommendation"] is None and out["candidate"] == "tuned"
    assert out["blocking"] == [{"gate": "json_compliance >= 0.9", "path": "json_compliance", "value": 0.25,
                                "op": ">=", "threshold": 0.9, "reason": "0.25 >= 0.9 is false",
                                "text": "json_compliance 0.25 < 0.9"}]
    assert out["worse_than_cheaper"] == [{"metric": "json_compliance", "variant": "tuned", "value": 0.25,
                                          "cheaper": "base_fewshot", "cheaper_value": 0.65}]


def test_unmeasured_gates_block_too_and_are_named():
    out = advise(demo_like(["json_compliance >= 0.2", "redteam.refusal >= 0.9", "base.token_f1 > 0.5"]))
    assert out["lines"][0] == ("Do not ship: 2 gates failed (redteam.refusal not measured: redteam was not run "
                               "(enable eval.redteam); base.token_f1 0.19 <= 0.5).")
    assert [b["gate"] for b in out["blocking"]] == ["redteam.refusal >= 0.9", "base.token_f1 > 0.5"]


def test_all_gates_pass_the_first_line_ships():
    out = advise(demo_like(["json_compliance >= 0.2", "regression.drop <= 0.15"]))
    lines = out["lines"]
    assert lines[0].startswith("Ship tuned: the fine-tuned model has the best field accuracy, 49% (95% CI 40%–58%)")
    assert lines[1] == "tuned is worse than the cheaper base_fewshot on JSON compliance: 0.25 vs 0.65."
    assert lines[-1] == "All 2 gate(s) pass."
    assert out["ship"] is True and out["recommendation"] == out["candidate"] == "tuned" and out["blocking"] == []
    assert out["levels"][0] == "info" and "block" not in out["levels"]


def test_cli_json_carries_the_verdict(tmp_path: Path):
    run = tmp_path / "runs" / "r1"
    (run / "eval").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "completed"}))
    (run / "eval" / "results.json").write_text(json.dumps(demo_like(["json_compliance >= 0.9"])))
    (tmp_path / "tailor.yaml").write_text(f"runs_dir: {tmp_path / 'runs'}\n")
    res = CliRunner().invoke(app, ["advise", "-c", str(tmp_path / "tailor.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["ship"] is False and data["recommendation"] is None and data["candidate"] == "tuned"
    assert data["lines"][0].startswith("Do not ship: 1 gate failed") and data["blocking"][0]["value"] == 0.25
    human = CliRunner().invoke(app, ["advise", "-c", str(tmp_path / "tailor.yaml")])
    assert human.exit_code == 0 and human.output.lstrip().startswith("Do not ship")
