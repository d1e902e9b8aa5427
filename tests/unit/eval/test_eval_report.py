"""The HTML report: built from a fake run folder, self-contained, escaped, robust to missing parts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmtailor.eval.report import write_report

MALICIOUS = '<script>alert("x")</script> Why was I charged twice?'


def make_run(root: Path, *, with_eval: bool = True, with_card: bool = True) -> Path:
    """A run folder as the train and eval stages write it (metrics.jsonl ends in a truncated line)."""
    data_dir = root / "data" / "abc123"
    run_dir = root / "runs" / "20250101-120000-beef"
    (run_dir / "eval").mkdir(parents=True)
    run = {
        "run_id": run_dir.name,
        "created": "2025-01-01T12:00:00Z",
        "status": "completed",
        "base_model": "smollm2-135m-instruct",
        "method": "lora",
        "dataset_hash": "abc123",
        "dataset_dir": str(data_dir),
        "final_loss": 0.8123,
        "train_runtime_s": 184.2,
        "train_tokens_per_s": 2210.5,
        "steps": 30,
        "lora_r": 16,
        "seed": 42,
    }
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "config.yaml").write_text("project: acme-support\ntrain:\n  method: lora\n  note: <b>bold</b>\n")
    lines = [
        json.dumps({"step": s, "epoch": s / 10, "loss": 2.5 - s * 0.05, "learning_rate": 2e-4, "grad_norm": 1.1})
        for s in range(1, 31)
    ]
    lines.insert(15, json.dumps({"step": 15, "epoch": 1.5, "eval_loss": 1.9}))
    lines.append(json.dumps({"step": 30, "eval_loss": 1.4}))
    lines.append(json.dumps({"step": 30, "train_loss": 1.7, "train_runtime": 184.2}))
    lines.append('{"step": 31, "loss": 0.7')  # truncated: the trainer was still writing
    (run_dir / "metrics.jsonl").write_text("\n".join(lines))
    if with_card:
        data_dir.mkdir(parents=True)
        card = {
            "hash": "abc123",
            "rows_in": 120,
            "rows_kept": 100,
            "dropped": {"duplicate": 12, "too_long": 8},
            "pii_counts": {"EMAIL_ADDRESS": 5, "PHONE_NUMBER": 2},
            "train_rows": 90,
            "eval_rows": 10,
            "token_lengths": {
                "min": 12,
                "mean": 80.5,
                "p50": 75,
                "p95": 160,
                "max": 210,
                "histogram": {"edges": [0, 50, 100, 150, 200, 250], "counts": [10, 40, 30, 15, 5]},
            },
            "sources": [{"name": "tickets", "path": "data/tickets.jsonl", "rows": 120}],
        }
        (data_dir / "card.json").write_text(json.dumps(card))
    if with_eval:
        results = {
            "variants": {
                "base": {
                    "exact_match": 0.125,
                    "token_f1": 0.41,
                    "rouge_l": 0.38,
                    "bleu": 0.12,
                    "json_parse_rate": 0.5,
                    "json_compliance": 0.25,
                    "field_accuracy": {"category": 0.3, "priority": 0.5},
                    "answer_length_tokens": 41.0,
                    "eval_loss": 2.31,
                    "perplexity": 10.07,
                    "skipped": {"exact_match": 1},
                },
                "tuned": {
                    "exact_match": 0.875,
                    "token_f1": 0.93,
                    "rouge_l": 0.91,
                    "bleu": 0.8,
                    "json_parse_rate": 1.0,
                    "json_compliance": 0.95,
                    "field_accuracy": {"category": 0.9, "priority": 0.8},
                    "answer_length_tokens": 12.0,
                    "eval_loss": 0.92,
                    "perplexity": 2.51,
                    "skipped": {"exact_match": 1},
                },
            },
            "n_examples": 3,
            "schema": "schema.json",
            "generation": {"max_new_tokens": 96, "do_sample": False},
        }
        (run_dir / "eval" / "results.json").write_text(json.dumps(results))
        examples = [
            {
                "id": "t1",
                "prompt": MALICIOUS,
                "reference": '{"category": "billing"}',
                "outputs": {"base": "I am not sure.", "tuned": '{"category": "billing"}'},
                "scores": {
                    "base": {"exact_match": 0.0, "json_valid": False},
                    "tuned": {"exact_match": 1.0, "json_valid": True},
                },
            },
            {
                "id": "t2",
                "prompt": "Reset my password",
                "reference": '{"category": "tech"}',
                "outputs": {"base": "Click here", "tuned": '{"category": "billing"}'},
                "scores": {
                    "base": {"exact_match": 0.0, "json_valid": False},
                    "tuned": {"exact_match": 0.0, "json_valid": True},
                },
            },
            {
                "id": "t3",
                "prompt": "No reference row",
                "reference": None,
                "outputs": {"base": "", "tuned": "ok"},
                "scores": {"base": {}, "tuned": {}},
            },
        ]
        (run_dir / "eval" / "examples.jsonl").write_text("\n".join(json.dumps(e) for e in examples) + "\n")
    return run_dir


def _no_remote_loads(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "@import" not in html and "url(http" not in html


def test_full_report(tmp_path):
    run_dir = make_run(tmp_path)
    out = write_report(run_dir)
    assert out == run_dir / "report.html" and out.is_file()
    html = out.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3  # token histogram, loss curve, metric bars
    for value in ("0.125", "0.875", "0.930", "2.3100", "0.9200", "+0.750"):
        assert value in html
    assert "&lt;script&gt;" in html and "<script>alert" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # config.yaml is escaped too
    assert "acme-support" in html and "EMAIL_ADDRESS" in html and "duplicate" in html
    assert "unreadable line(s) in metrics.jsonl" in html
    assert "Field accuracy · category" in html
    _no_remote_loads(html)
    assert "http://" not in html and "https://" not in html


def test_report_custom_out_title_and_sample_size(tmp_path):
    run_dir = make_run(tmp_path)
    out = write_report(run_dir, out=tmp_path / "r" / "report.html", title="Q3 <pilot>", sample_size=1)
    html = out.read_text(encoding="utf-8")
    assert "Q3 &lt;pilot&gt;" in html and "Showing 1 of 3" in html


def test_report_without_eval_or_card(tmp_path):
    run_dir = make_run(tmp_path, with_eval=False, with_card=False)
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "Evaluation not run yet" in html and "No dataset card found" in html
    assert html.count("data:image/png;base64,") == 1  # the loss curve only
    _no_remote_loads(html)


def test_report_on_bare_folder(tmp_path):
    run_dir = tmp_path / "empty-run"
    run_dir.mkdir()
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text("{ truncated")
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "Training not run yet" in html and "results.json could not be read" in html
    assert "run.json is missing" in html


def test_report_with_three_variants(tmp_path):
    run_dir = make_run(tmp_path)
    path = run_dir / "eval" / "results.json"
    results = json.loads(path.read_text())
    results["variants"]["merged"] = {"exact_match": 0.5, "eval_loss": float("nan")}
    path.write_text(json.dumps(results))
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "Δ tuned − base" in html and "Δ merged − base" in html
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"\bnan\b", text, re.I)  # NaN renders as a dash


def test_ranking_shows_ties_as_equal_not_as_an_order():
    from llmtailor.eval.report import ranking_text

    assert ranking_text(["tuned", "base", "base_fewshot"], {"tuned": 0.8, "base": 0.0, "base_fewshot": 0.0}) == \
        "tuned > base = base_fewshot"
    assert ranking_text(["a", "b"], {"a": 0.5, "b": 0.4}) == "a > b"
    assert ranking_text(["a", "b"], {"a": 0.5, "b": None}) == "a > b"
