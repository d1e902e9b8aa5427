"""`tailor monitor` on a real SQLite registry and the packaged MiniLM: production queries like the training data
raise nothing; queries about other things cross the drift thresholds; feedback and guardrail rates are counted;
thumbs-up conversations become a new dataset version through `prepare`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llmtailor.config import load_config
from llmtailor.io import read_jsonl, write_jsonl
from llmtailor.registry.db import Registry
from llmtailor.registry.hooks import sync_run
from llmtailor.registry.monitor import monitor, reviewed_conversations
from llmtailor.runs import update_run

BILLING = [
    "I was charged twice for my subscription this month", "Why is my invoice higher than last month?",
    "Please refund the duplicate payment on my card", "How do I download last year's invoices?",
    "My credit card payment failed, can you retry it?", "Can I switch from monthly to yearly billing?",
    "The VAT number on my invoice is wrong", "I need a receipt for the March payment",
    "Cancel my plan and refund the unused days", "Why was I billed in dollars instead of euros?",
    "Update the billing address on my account", "The discount code was not applied to my invoice",
]
OTHER = [
    "What is a good recipe for banana bread?", "How long should I boil an egg?", "Best hiking trails in the Alps",
    "Explain the offside rule in football", "Which houseplants need little light?", "How do I tune a guitar?",
    "Suggest a name for my new puppy", "What is the capital of Australia?", "How to fold a paper crane",
    "Tips for growing tomatoes on a balcony", "Who painted the Sistine Chapel ceiling?", "How do I make sourdough?",
]


@pytest.fixture(scope="module")
def embedder():
    from llmtailor.rag.embed import load_embedder

    return load_embedder(None)  # the packaged all-MiniLM-L6-v2


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    """tailor.yaml, a dataset version of billing questions, a run trained on it deployed to production."""
    src = tmp_path / "data" / "train.jsonl"
    write_jsonl(src, [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Sure."}]}
                      for q in BILLING])
    ds = tmp_path / "datasets" / "h1"
    ds.mkdir(parents=True)
    (ds / "train.jsonl").write_text(src.read_text())
    (tmp_path / "tailor.yaml").write_text(
        f"project: acme\nmodel: {{base_model: {tiny_model_dir}}}\n"
        "data: {sources: [data/train.jsonl], pii: {enabled: false}, split: {eval_fraction: 0.2}}\n"
        "serve: {monitor: {min_queries: 10}}\n")
    cfg = load_config(tmp_path / "tailor.yaml")
    reg = Registry.for_config(cfg)
    reg.record_dataset("h1", ds, {"train_rows": len(BILLING)})
    run = tmp_path / "runs" / "r1"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    update_run(run, run_id="r1", status="completed", method="lora", base_model="tiny", dataset_hash="h1",
               adapter_dir=str(run / "adapter"))
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps({"gates": {"passed": True}}))
    sync_run(reg, run)
    reg.promote("r1", "production")
    yield cfg, reg
    reg.close()


def _log(reg, queries, prefix, hits_every=0):
    for i, q in enumerate(queries):
        hit = {"check": "input_pii", "action": "redact", "found": {"EMAIL": 1}}
        hits = [hit] if hits_every and i % hits_every == 0 else []
        reg.log_request(id=f"{prefix}-{i}", model="support-bot", adapter_id="ad-r1", status=200, latency_ms=10.0,
                        guardrails=hits, prompt=q, answer=f"answer {i}")


def test_similar_traffic_raises_nothing_and_other_topics_trigger_retraining(project, embedder):
    cfg, reg = project
    # Paraphrases of the training questions: same distribution.
    _log(reg, [q.replace("my", "our") for q in BILLING], "same")
    calm = monitor(reg, cfg, embedder=embedder)
    assert calm["production_adapter"] == "ad-r1" and calm["dataset"].endswith("h1")
    assert calm["drift"]["queries"] == len(BILLING) and not calm["retrain"], calm["triggers"]
    assert calm["drift"]["novel_share"] == 0.0

    _log(reg, OTHER, "other", hits_every=3)
    for i in range(6):
        reg.add_feedback(f"other-{i}", "down", "off topic", None)
    reg.add_feedback("same-0", "up", None, None)
    drifted = monitor(reg, cfg, embedder=embedder)
    d = drifted["drift"]
    assert d["centroid_distance"] > calm["drift"]["centroid_distance"] and d["mmd"] > calm["drift"]["mmd"]
    assert d["novel_share"] >= 0.4 and set(d["novel_examples"]) <= set(OTHER)
    assert drifted["retrain"] and any(t.startswith("drift") for t in drifted["triggers"])
    assert drifted["feedback"] == {"rated": 7, "up": 1, "down": 6, "rate": round(7 / 24, 4),
                                   "down_rate": round(6 / 7, 4)}
    assert drifted["guardrails"]["hits"] == {"input_pii": 4} and drifted["guardrails"]["requests_with_hits"] == 4
    assert any("thumbs-down" in t for t in drifted["triggers"])


def test_cli_exit_code_and_export_of_reviewed_conversations(project, embedder, monkeypatch):
    from llmtailor.cli.main import app

    cfg, reg = project
    _log(reg, OTHER, "q")
    reg.add_feedback("q-1", "up", "great", None)
    reg.add_feedback("q-2", "up", None, None)
    reg.add_feedback("q-3", "up", None, None)
    reg.add_feedback("q-3", "down", "actually wrong", None)  # disputed: not exported
    assert [r["meta"]["request_id"] for r in reviewed_conversations(reg)] == ["q-1", "q-2"]
    monkeypatch.chdir(cfg.base_dir)
    monkeypatch.setattr("llmtailor.rag.embed.load_embedder", lambda *a, **k: embedder)
    r = CliRunner().invoke(app, ["monitor", "--json"])
    assert r.exit_code == 3, r.output  # drift: retraining threshold crossed
    assert json.loads(r.output)["retrain"] is True
    r = CliRunner().invoke(app, ["monitor", "--export-dataset", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["exported"] == 2 and not out["reused"]
    rows = [row for _, row in read_jsonl(out["path"] + "/train.jsonl")] + \
        [row for _, row in read_jsonl(out["path"] + "/eval.jsonl")]
    users = {m["content"] for row in rows for m in row["messages"] if m["role"] == "user"}
    assert {OTHER[1], OTHER[2]} <= users and set(BILLING) <= users and OTHER[3] not in users
    assert reg.show(out["registry_id"])["kind"] == "dataset"
