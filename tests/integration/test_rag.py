"""Integration: real files, the packaged all-MiniLM-L6-v2 and SmolLM2 (marked `integration`).

A small folder of real documents (Markdown, text, HTML, DOCX, PDF) is ingested with the real embedding
model, searched in every mode, and `rag ask` answers with the real SmolLM2 and cites its source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmtailor.rag.acl import Caller
from llmtailor.rag.config import RagConfig
from tests.unit.rag.conftest import POLICY_MD, make_docx, make_pdf_with_outline

pytestmark = pytest.mark.integration

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def real_index(tmp_path_factory):
    from llmtailor.rag.ingest import ingest
    from llmtailor.rag.meta import DocMeta

    root = tmp_path_factory.mktemp("rag-int")
    d = root / "docs"
    d.mkdir()
    (d / "policy.md").write_text(POLICY_MD, encoding="utf-8")
    (d / "leave.txt").write_text("Employees get twenty-five days of paid holiday leave per year.\n", encoding="utf-8")
    (d / "security.html").write_text(
        "<html><head><title>Security Guide</title></head><body><h1>Security Guide</h1>"
        "<p>Lock your laptop screen whenever you leave your desk.</p><h2>Passwords</h2>"
        "<p>Passwords must be at least fourteen characters long.</p></body></html>", encoding="utf-8")
    make_docx(d / "travel.docx")
    (d / "handbook.pdf").write_bytes(make_pdf_with_outline(
        [["Handbook", "Welcome to the company handbook."],
         ["Expenses", "Expense reports are due by the fifth working day of each month."]],
        [("Handbook", 0), ("Expenses", 1)], title="Employee Handbook"))
    cfg = RagConfig()
    rep = ingest([d], root / "idx", cfg, defaults=DocMeta(tenant="acme"))
    assert rep.skipped == [] and rep.files_new == 5
    return root / "idx", cfg


def test_minilm_chunks_fit_the_real_tokenizer(real_index):
    from llmtailor.rag.index import Index

    idx, cfg = real_index
    index = Index.open(idx, cfg)
    try:
        assert index.info["embedding"]["model"] == "all-minilm-l6-v2" and index.info["embedding"]["dim"] == 384
        chunks = index.store.fetch()
        counts = index.embedder.count_tokens([c.text for c in chunks])
        assert max(counts) <= cfg.chunking.max_tokens
    finally:
        index.close()


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_minilm_search_finds_the_answer(real_index, mode):
    from llmtailor.rag.search import Retriever

    idx, cfg = real_index
    r = Retriever.open(idx, cfg)
    try:
        res = r.search("When is a refund paid back to the card?", caller=Caller("acme"), mode=mode, top_k=3)
        assert res.hits[0].chunk.source.endswith("policy.md"), [h.chunk.source for h in res.hits]
        res = r.search("maximum price of a hotel room", caller=Caller("acme"), mode=mode, top_k=3)
        assert any(h.chunk.source.endswith("travel.docx") for h in res.hits)
        assert r.search("refund", caller=Caller("globex"), mode=mode).hits == []
    finally:
        r.close()


def test_rag_ask_with_smollm2_cites_its_source(real_index):
    """The real CLI, the real model: an answer with a [n] citation mapped to the file, page and heading."""
    idx, _ = real_index
    project = idx.parent / "tailor.yaml"  # a short answer budget keeps CPU generation to seconds
    project.write_text("rag:\n  answer:\n    max_new_tokens: 48\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "llmtailor.cli.main", "rag", "ask", "When are expense reports due?", "--index",
         str(idx), "--tenant", "acme", "-c", str(project), "--json"],
        capture_output=True, text=True, timeout=600, env=ENV, cwd=idx.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ans = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ans["known"] is True and ans["answer"].strip()
    assert ans["passages"][0]["source"].endswith("handbook.pdf") and ans["passages"][0]["page"] == 2
    print("SmolLM2 answered:", ans["answer"])
    assert ans["citations"], f"no [n] citation in: {ans['answer']!r}"
    assert all(c["source"] for c in ans["citations"])
    # Nothing relevant: the model is not asked and the assistant says it does not know.
    proc = subprocess.run(
        [sys.executable, "-m", "llmtailor.cli.main", "rag", "ask", "Who won the 1954 football world cup?",
         "--index", str(idx), "--tenant", "acme", "--json"],
        capture_output=True, text=True, timeout=600, env=ENV, cwd=idx.parent,
    )
    no = json.loads(proc.stdout.strip().splitlines()[-1])
    assert no["known"] is False and no["citations"] == []
    assert Path(idx / "index.json").exists()
