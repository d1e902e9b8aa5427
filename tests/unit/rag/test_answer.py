"""`rag ask`: the prompt goes through the shared renderer, citations map to file/page/heading, and a question
with nothing relevant gets "I don't know" without calling the model."""

from __future__ import annotations

import pytest

from llmtailor.chat import render_prompt
from llmtailor.rag.acl import Caller
from llmtailor.rag.answer import RagAssistant, build_messages, cited_numbers
from llmtailor.rag.index import Index
from llmtailor.rag.ingest import ingest
from llmtailor.rag.meta import DocMeta
from llmtailor.rag.search import Retriever
from tests.unit.rag.conftest import CountingEmbedder, rag_config


@pytest.fixture()
def assistant_parts(corpus, tmp_path):
    cfg = rag_config(answer={"min_score": 0.2})
    ingest([corpus], tmp_path / "idx", cfg, embedder=CountingEmbedder(), defaults=DocMeta(tenant="acme"))
    retriever = Retriever(Index.open(tmp_path / "idx", cfg), cfg.search)
    yield cfg, retriever
    retriever.close()


def test_cited_numbers_in_order_without_repeats():
    assert cited_numbers("A [2] and B [1][2], see [10].") == [2, 1, 10]
    assert cited_numbers("no citations") == []


def test_answer_with_citations_through_the_shared_renderer(assistant_parts, tiny_model, tiny_tokenizer, monkeypatch):
    cfg, retriever = assistant_parts
    seen = {}

    def fake_generate(model, tok, conversations, max_new_tokens):
        # The generator renders with chat.render_prompt; record what it was given.
        seen["prompt"] = render_prompt(tok, conversations[0])
        return ["Expense reports are due by the fifth working day [1]. Not in [9]."]

    monkeypatch.setattr("llmtailor.generate.generate", fake_generate)
    bot = RagAssistant(retriever, cfg.answer, model=tiny_model, tokenizer=tiny_tokenizer)
    ans = bot.ask("When are expense reports due?", caller=Caller("acme"))
    assert ans.known
    assert ans.prompt == seen["prompt"]
    assert ans.prompt.startswith("<|im_start|>system\n" + cfg.answer.system_prompt)
    assert "[1] (source: handbook.pdf, page 2, section: Expenses)" in ans.prompt
    assert ans.prompt.rstrip().endswith("<|im_start|>assistant")
    assert [c.number for c in ans.citations] == [1] and ans.invalid_citations == [9]
    c = ans.citations[0]
    assert c.source.endswith("handbook.pdf") and c.page == 2 and c.heading_path == "Expenses"
    assert c.label() == "handbook.pdf, p. 2, Expenses"
    assert len(ans.passages) <= cfg.answer.max_context_chunks
    d = ans.as_dict()
    assert d["citations"][0]["page"] == 2 and "generate_ms" in d["timings_ms"]


def test_real_tiny_model_generates_through_the_whole_path(assistant_parts, tiny_model, tiny_tokenizer):
    cfg, retriever = assistant_parts
    cfg.answer.max_new_tokens = 8
    bot = RagAssistant(retriever, cfg.answer, model=tiny_model, tokenizer=tiny_tokenizer)
    ans = bot.ask("When are expense reports due?", caller=Caller("acme"))
    assert ans.known and isinstance(ans.answer, str) and ans.passages
    assert ans.prompt == render_prompt(tiny_tokenizer, build_messages(
        "When are expense reports due?", retriever.search("When are expense reports due?", caller=Caller("acme"),
                                                          top_k=cfg.answer.max_context_chunks,
                                                          with_similarity=True).hits, cfg.answer.system_prompt))


def test_nothing_relevant_means_i_dont_know_and_no_generation(assistant_parts):
    cfg, retriever = assistant_parts

    def loader():
        raise AssertionError("the model must not be loaded when nothing relevant was retrieved")

    bot = RagAssistant(retriever, cfg.answer, loader=loader)
    ans = bot.ask("quantum chromodynamics lattice gluon", caller=Caller("acme"))
    assert not ans.known and ans.answer == cfg.answer.no_answer and ans.citations == []
    assert ans.best_score is not None and ans.best_score < cfg.answer.min_score
    # Another tenant: nothing is visible at all.
    ans = bot.ask("When are expense reports due?", caller=Caller("globex"))
    assert not ans.known and ans.passages == [] and ans.best_score is None


def test_rewriter_parses_model_lines(assistant_parts, monkeypatch, tiny_model, tiny_tokenizer):
    cfg, retriever = assistant_parts
    monkeypatch.setattr("llmtailor.generate.generate",
                        lambda m, t, c, max_new_tokens: ["1. hotel cap per night\n- hotel cap per night\n* room price"])
    bot = RagAssistant(retriever, cfg.answer, model=tiny_model, tokenizer=tiny_tokenizer)
    assert bot.rewrite("accommodation?") == ["hotel cap per night", "room price"]
    res = retriever.search("accommodation limits", caller=Caller("acme"), rewrite=True)
    assert res.queries == ["accommodation limits", "hotel cap per night", "room price"]
