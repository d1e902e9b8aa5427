"""The RAG rungs of the ladder on a real (hashing-embedder) index with tiny random models, and grounding scoring.

The RAG variants must ask exactly what `tailor rag ask` asks (`RagAssistant.retrieve`), answer "I don't know"
without generating when nothing relevant is found, and never produce NaN.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.config import TailorConfig
from llmtailor.eval.evaluate import evaluate
from llmtailor.eval.grounding import grounding_row, grounding_scores
from llmtailor.eval.ladder import build_variants
from llmtailor.io import write_jsonl
from llmtailor.rag.answer import RagAssistant
from llmtailor.rag.ingest import ingest
from llmtailor.rag.meta import DocMeta
from llmtailor.rag.search import Retriever
from tests.unit.rag.conftest import rag_config

DOCS = {
    "expenses.md": "# Expenses\n\nExpense reports are due by the fifth working day of each month.\n",
    "leave.txt": "Employees get twenty-five days of paid holiday leave per year.\n",
}
QA = [
    ("When are expense reports due?", "Expense reports are due by the fifth working day of each month."),
    ("How many days of holiday leave do employees get?", "Twenty-five days of paid holiday leave per year."),
    ("quantum chromodynamics lattice gluon", "No idea."),  # nothing relevant: the assistant abstains
    ("When are expense reports due each month?", None),  # no reference answer
]
RAG = {"embedding": {"model": "hashing"}, "chunking": {"max_tokens": 40, "overlap_tokens": 8},
       "answer": {"min_score": 0.2, "max_context_chunks": 2}}


def _row(q: str, a: str | None) -> dict:
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}]
    return {"messages": msgs + ([{"role": "assistant", "content": a}] if a else [])}


@pytest.fixture()
def rag_run(run_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The conftest run folder with Q&A held-out rows and an index of two documents."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    ingest([docs], tmp_path / "idx", rag_config(), defaults=DocMeta())
    info = json.loads((run_dir / "run.json").read_text())
    write_jsonl(Path(info["dataset_dir"]) / "eval.jsonl", [_row(q, a) for q, a in QA])
    return run_dir, tmp_path / "idx"


def cfg_for(run_dir: Path, index: Path, **eval_cfg) -> TailorConfig:
    base = {"max_new_tokens": 6, "batch_size": 4, "fewshot_k": 2, "bootstrap": {"resamples": 200},
            "variants": ["base", "base_rag", "tuned_rag", "base_fewshot_rag"]}
    base.update(eval_cfg)
    return TailorConfig.model_validate({"runs_dir": str(run_dir.parent), "eval": base,
                                        "rag": {**RAG, "index_dir": str(index)}})


def test_rag_prompts_are_the_rag_ask_prompts(rag_run):
    run_dir, index = rag_run
    cfg = cfg_for(run_dir, index)
    prompts = [_row(q, a)["messages"][:2] for q, a in QA]
    questions = [q for q, _ in QA]
    variants, skipped, shots = build_variants(cfg, cfg.eval.variants, prompts, [], questions, say=lambda m: None)
    assert skipped == {"base_fewshot_rag": "no train rows to draw few-shot examples from"}
    by_name = {v.name: v for v in variants}
    bot = RagAssistant(Retriever.open(index, cfg.rag), cfg.rag.answer)
    try:
        for i, q in enumerate(questions):
            found = bot.retrieve(q)
            assert by_name["base_rag"].asks(i) is found.known
            if found.known:
                assert by_name["base_rag"].prompts[i] == found.messages == by_name["tuned_rag"].prompts[i]
    finally:
        bot.close()
    assert [by_name["base_rag"].asks(i) for i in range(4)] == [True, True, False, True]
    assert by_name["base"].retrieved is None and by_name["base"].asks(2)


def test_rag_ladder_scores_grounding_citations_and_abstentions(rag_run, models_factory):
    run_dir, index = rag_run
    cfg = cfg_for(run_dir, index, gates=["tuned_rag.context_recall >= 0.5", "base_rag.abstain_rate <= 0.25"])
    said: list[str] = []
    result = evaluate(cfg, run_dir, show_progress=False, say=said.append, models=models_factory(cfg, run_dir))
    text = result.results_path.read_text()
    res = json.loads(text)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))  # no NaN / Infinity
    assert list(res["variants"]) == ["base", "base_rag", "tuned_rag", "base_fewshot_rag"]
    assert res["skipped_variants"] == {}
    for name in ("base_rag", "tuned_rag"):
        agg = res["variants"][name]
        assert agg["abstained"] == 1 and agg["abstain_rate"] == 0.25
        # Reference sentences found in the passages: rows 1-2 yes, row 3 (unrelated) no, row 4 has no reference.
        assert agg["context_recall"] == pytest.approx(2 / 3) and agg["grounding_unscorable"]["context_recall"] == 1
        assert agg["grounding_unscorable"]["faithfulness"] >= 1  # the abstained row has no answer to check
        assert agg["truncated"] <= 3  # the abstained row was never generated
    assert "faithfulness" not in res["variants"]["base"] and "abstained" not in res["variants"]["base"]
    assert all(g["passed"] for g in res["gates"]["results"]), res["gates"]
    examples = [json.loads(x) for x in (run_dir / "eval" / "examples.jsonl").read_text().splitlines()]
    abst = examples[2]
    assert abst["outputs"]["base_rag"] == cfg.rag.answer.no_answer and abst["scores"]["base_rag"]["abstained"]
    assert "faithfulness" not in abst["scores"]["base_rag"] and abst["scores"]["base_rag"]["cited"] == []
    assert abst["scores"]["base_rag"]["truncated"] is False
    first = examples[0]
    assert Path(first["passages"][0]["source"]).name == "expenses.md" and first["passages"][0]["number"] == 1
    assert "fifth working day" in first["passages"][0]["text"]
    assert "context_recall" not in examples[3]["scores"]["tuned_rag"]  # no reference: skipped, counted above

    from llmtailor.eval.report import write_report

    html = write_report(run_dir).read_text()
    for part in ("Context recall", "retrieved passage", "expenses.md", "I don&#39;t know (nothing relevant)",
                 "not scorable"):
        assert part in html, part


def test_documents_invisible_to_the_public_caller_are_reported(run_dir, tmp_path, models_factory):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "leave.txt").write_text(DOCS["leave.txt"], encoding="utf-8")
    ingest([docs], tmp_path / "idx", rag_config(), defaults=DocMeta(tenant="acme"))
    info = json.loads((run_dir / "run.json").read_text())
    write_jsonl(Path(info["dataset_dir"]) / "eval.jsonl", [_row(q, a) for q, a in QA[:2]])
    cfg = cfg_for(run_dir, tmp_path / "idx", variants=["base", "base_rag"])
    said: list[str] = []
    res = evaluate(cfg, run_dir, show_progress=False, say=said.append, models=models_factory(cfg, run_dir)).results
    assert any("no passage retrieved for any held-out row" in s for s in said)
    agg = res["variants"]["base_rag"]
    assert agg["abstain_rate"] == 1.0 and agg["faithfulness"] is None and agg["context_recall"] is None
    assert agg["grounding_unscorable"]["faithfulness"] == 2


def test_missing_index_skips_the_rag_rungs_with_the_reason(run_dir, tmp_path, models_factory):
    cfg = cfg_for(run_dir, tmp_path / "nowhere", variants=["base", "tuned_rag"])
    res = evaluate(cfg, run_dir, show_progress=False, models=models_factory(cfg, run_dir)).results
    assert list(res["variants"]) == ["base"]
    assert "no index at" in res["skipped_variants"]["tuned_rag"] and "tailor rag ingest" in \
        res["skipped_variants"]["tuned_rag"]


def test_grounding_skips_and_counts_what_a_row_cannot_score():
    passages = ["Expense reports are due by the fifth working day.", "Hotels cost at most 150 euros."]
    row = grounding_row("Reports are due by the fifth working day [1]. Hotels cost 150 euros [2]. Ask Bob [7].",
                        "When are expense reports due?", passages, None)
    # "Ask Bob [7]" is supported by no passage and cites one that does not exist.
    assert row["faithfulness"] == pytest.approx(2 / 3) and row["citation_correctness"] == pytest.approx(2 / 3)
    assert "context_precision" not in row and "context_recall" not in row  # no reference: skipped
    assert grounding_row("anything", "q", passages, "ref", abstained=True).keys() == {"context_precision",
                                                                                       "context_recall"}
    agg, rows = grounding_scores(["", "The fifth working day [1]."], ["q1", "When due?"], [[], passages],
                                 [None, "Due by the fifth working day."])
    assert rows[0] == {} and agg["grounding_unscorable"] == {"faithfulness": 1, "answer_relevance": 1,
                                                             "context_precision": 1, "context_recall": 1,
                                                             "citation_correctness": 1}
    assert agg["context_recall"] == 1.0 and agg["context_precision"] == 1.0
    agg, _ = grounding_scores([""], ["q"], [[]], [None])
    assert all(agg[m] is None for m in ("faithfulness", "context_recall", "citation_correctness"))
