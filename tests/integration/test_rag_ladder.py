"""Integration: the RAG rungs of the ladder (base_rag, tuned_rag) against a real index (marked `integration`).

Real Markdown/text documents are ingested with `tailor rag ingest` and the packaged MiniLM, SmolLM2 is tuned for two
steps, then `tailor eval` and `tailor report` run through the CLI. Kept short: three held-out rows, 16 new tokens.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

DOCS = {
    "expenses.md": "# Expenses\n\n## Deadlines\n\nExpense reports are due by the fifth working day of each month.\n\n"
                   "## Hotels\n\nA hotel room may cost at most 150 euros per night.\n",
    "leave.txt": "Holiday leave\n\nEmployees get twenty-five days of paid holiday leave per year.\n",
    "security.md": "# Security\n\nPasswords must be at least fourteen characters long.\n\n"
                   "Lock your laptop screen whenever you leave your desk.\n",
}
QA = [
    ("When are expense reports due?", "Expense reports are due by the fifth working day of each month."),
    ("How much may a hotel room cost?", "A hotel room may cost at most 150 euros per night."),
    ("How many days of holiday leave do employees get?", "Employees get twenty-five days of paid holiday leave."),
    ("How long must a password be?", "Passwords must be at least fourteen characters long."),
    ("What should I do when I leave my desk?", "Lock your laptop screen whenever you leave your desk."),
    ("What is the deadline for expense reports?", "The fifth working day of each month."),
    ("What is the nightly limit for hotels?", "At most 150 euros per night."),
    ("How much paid leave do I get per year?", "Twenty-five days of paid holiday leave per year."),
    ("What is the minimum password length?", "Fourteen characters."),
    ("Must I lock my laptop?", "Yes: lock your laptop screen whenever you leave your desk."),
]
GROUNDING = ("faithfulness", "answer_relevance", "context_precision", "context_recall", "citation_correctness")


def _cli(*args: str) -> str:
    from llmtailor.cli.main import app

    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Documents, a Q&A dataset about them, and a tailor.yaml with a rag section and a RAG ladder."""
    root = tmp_path_factory.mktemp("eval-rag")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    (root / "data").mkdir()
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    (root / "data" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = {
        "project": "rag-eval",
        "data": {"sources": [{"path": "data/qa.jsonl"}], "system_prompt": "You answer questions about company policy.",
                 "max_seq_len": 256, "dedup": {"enabled": False}, "pii": {"enabled": False},
                 "split": {"eval_fraction": 0.3, "seed": 1}},
        "train": {"max_steps": 2, "batch_size": 2, "save_steps": 2, "learning_rate": 0.0005},
        "eval": {"variants": ["base", "base_rag", "tuned_rag"], "max_new_tokens": 16, "batch_size": 4,
                 "max_examples": 3, "bootstrap": {"resamples": 100}, "metrics": ["exact_match", "token_f1"],
                 "gates": ["tuned_rag.context_recall > 0", "data.leakage == 0"]},  # both can fail
        "rag": {"index_dir": "rag-index", "answer": {"max_context_chunks": 2}},
    }
    (root / "tailor.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return root


def test_rag_ladder_against_a_real_index(project, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(project)
    config = str(project / "tailor.yaml")
    ingest = json.loads(_cli("rag", "ingest", str(project / "docs"), "-c", config, "--json").strip().splitlines()[-1])
    assert ingest["files_new"] == 3 and (project / "rag-index").is_dir()
    _cli("train", "-c", config)
    _cli("eval", "-c", config, "--gate")
    run_dir = next((project / "runs").iterdir())
    results = json.loads((run_dir / "eval" / "results.json").read_text())

    # Both RAG rungs ran (not skipped) on the same rows as base.
    assert results["status"] == "complete" and results["skipped_variants"] == {}
    assert list(results["variants"]) == ["base", "base_rag", "tuned_rag"] and results["n_examples"] == 3
    for name in ("base_rag", "tuned_rag"):
        agg = results["variants"][name]
        for m in GROUNDING:  # a number, or None with the unscorable rows counted; never NaN
            v = agg[m]
            assert v is None or (isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1), (name, m, v)
            assert v is not None or agg["grounding_unscorable"][m] == 3
        assert agg["context_recall"] is not None and agg["context_recall"] > 0  # the answers are in the documents
    assert "faithfulness" not in results["variants"]["base"]
    assert results["gates"]["passed"] is True

    # Per-example rows carry the numbered passages with their sources, and per variant the citations made.
    examples = [json.loads(x) for x in (run_dir / "eval" / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 3
    for ex in examples:
        assert 1 <= len(ex["passages"]) <= 2 and ex["passages"][0]["number"] == 1
        assert Path(ex["passages"][0]["source"]).name in DOCS and ex["passages"][0]["text"]
        for name in ("base_rag", "tuned_rag"):
            sc = ex["scores"][name]
            assert isinstance(sc["cited"], list) and isinstance(sc["invalid_citations"], list)
            assert all(1 <= n <= len(ex["passages"]) for n in sc["cited"])
            if not sc["abstained"]:
                assert ex["outputs"][name].strip()
        assert "cited" not in ex["scores"]["base"]
    for name in ("base_rag", "tuned_rag"):
        agg, rows = results["variants"][name], [ex["scores"][name] for ex in examples]
        # the rates count the per-example flags; every question is about the documents, so some row was asked
        assert agg["abstain_rate"] == pytest.approx(sum(r["abstained"] for r in rows) / len(rows))
        assert agg["abstain_rate"] < 1
        assert agg["cite_rate"] == pytest.approx(sum(bool(r["cited"]) for r in rows) / len(rows))

    # The report shows the grounding metrics, the passages and the citation badges.
    _cli("report", "-c", config)
    html = (run_dir / "report.html").read_text()
    for part in ("Faithfulness", "Context precision", "Context recall", "Citation correctness", "retrieved passage",
                 "base_rag", "tuned_rag"):
        assert part in html, part
    assert re.search(r"cites \[\d\]|no citation|I don&#39;t know", html)
    assert not re.search(r"\bnan\b", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html), re.I)
