"""Faithfulness must catch negation, changed numbers and dates, not just count shared words.

The first tests fail on the word-overlap scorer (every one of their sentences shares all its content words with
the passage); the labelled-set test keeps the checker's measured precision and recall from regressing
(bench/faithfulness.py reports the same figures)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llmtailor.eval import grounding
from llmtailor.eval.claims import check
from llmtailor.eval.grounding import (
    GROUNDING_METRICS,
    SUPPORT,
    content_words,
    grounding_row,
    grounding_scores,
    lexical_support,
    sentences,
    support,
    supported,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "faithfulness_pairs.json"
PASSAGE = ("Expense reports are due by the fifth working day of each month. A hotel room may cost at most 150 euros "
           "per night. Refunds are issued within 14 days. The office is closed on 24 December.")


@pytest.mark.parametrize("answer", [
    "Expense reports are not due by the fifth working day of each month [1].",  # negation
    "Expense reports are due by the third working day of each month [1].",  # changed ordinal
    "A hotel room may cost at most 200 euros per night [1].",  # changed number
    "A hotel room may cost at least 150 euros per night [1].",  # flipped bound
    "Refunds are issued within 14 hours [1].",  # changed unit
    "The office is closed on 25 December [1].",  # changed date
])
def test_contradicted_answer_scores_zero_faithfulness_and_citation(answer):
    assert lexical_support(answer, PASSAGE) >= SUPPORT  # the old scorer called each of these supported
    row = grounding_row(answer, "q", [PASSAGE], None)
    assert row["faithfulness"] == 0.0
    assert row["citation_correctness"] == 0.0
    assert support(answer, PASSAGE) == 0.0 and not supported(answer, [PASSAGE])


def test_the_issue_example_negated_sentence_and_its_citation():
    passage = "The invoice is due on the first day of the month."
    agg, rows = grounding_scores(["The invoice is not due on the first day of the month [1]."], ["When?"],
                                 [[passage]], [None])
    assert agg["faithfulness"] == 0.0 and agg["citation_correctness"] == 0.0
    # the same answer without "not" stays fully supported
    agg, _ = grounding_scores(["The invoice is due on the first day of the month [1]."], ["When?"], [[passage]],
                              [None])
    assert agg["faithfulness"] == 1.0 and agg["citation_correctness"] == 1.0


@pytest.mark.parametrize("answer", [
    "Expense reports are due by the fifth working day of each month [1].",
    "Expense reports must be handed in no later than the 5th working day of the month.",  # "no later than" = "by"
    "A hotel room may cost up to €150 a night.",  # bound and currency spelled differently
    "Refunds are issued within two weeks.",  # 14 days
    "The office is not open on 24 December.",  # negated opposite: "not open" = "closed"
])
def test_supported_paraphrases_stay_supported(answer):
    assert grounding_row(answer, "q", [PASSAGE], None)["faithfulness"] == 1.0


def test_one_contradicted_sentence_of_two_halves_faithfulness():
    answer = "Refunds are issued within 14 days. The office is closed on 31 December."
    assert grounding_row(answer, "q", [PASSAGE], None)["faithfulness"] == 0.5


def test_context_recall_does_not_count_a_contradicting_passage():
    reference = "Hotel rooms may cost at most 150 euros per night."
    contradicting = "A hotel room may cost at most 250 euros per night."
    row = grounding_row("x", "q", [contradicting, PASSAGE], reference)
    assert row["context_recall"] == 1.0 and row["context_precision"] == pytest.approx(0.5)  # relevant at rank 2
    assert grounding_row("x", "q", [contradicting], reference)["context_recall"] == 0.0


@pytest.mark.parametrize(("sentence", "passage", "ok"), [
    ("Lost badges must be reported within one day.", "Lost badges must be reported within 24 hours.", True),
    ("Late returns cost 20 euros per day.", "Late returns cost 20 cents per day.", False),
    ("The router weighs 0.85 kilograms.", "The router weighs 850 grams.", True),
    ("Employees get 25 days of leave.", "Employees get twenty-five days of leave.", True),
    ("A change needs one reviewer.", "A change needs two reviewers; a hotfix needs one approval.", False),
    ("Shareholders must register after 1 June.", "Shareholders must register before 1 June.", False),
    ("The meeting is on 2025-06-14.", "The meeting is on 14 June 2025.", True),
    ("The help desk is open on Wednesday.", "The help desk is open Monday to Friday.", True),
    ("The help desk is open on Saturday.", "The help desk is open Monday to Friday.", False),
    ("Parental leave is paid after 16 weeks.", "Parental leave is unpaid after 16 weeks.", False),
    ("VAT is not included in the prices.", "Prices exclude VAT.", True),
    ("Prices include VAT.", "Prices exclude VAT.", False),
    ("The company was founded in Amsterdam in 1998.", "The company was founded in Rotterdam in 1998. It moved "
     "to Amsterdam in 2011.", False),
    ("The X300 supports Wi-Fi 6.", "The X200 supports Wi-Fi 6.", False),
    ("Do not take more than four tablets a day.", "Take no more than four tablets a day.", True),
    ("Revenue fell by 12% in 2023.", "Revenue grew by 12% in 2023.", False),
])
def test_rules(sentence, passage, ok):
    v = check(sentence, passage)
    assert v.supported is ok, v


def test_public_api_is_kept():
    # names the rest of the code base imports (evaluate, regression, tests) keep their meaning
    assert content_words("The refunds are issued") == {"refund", "issu"}
    assert sentences("First one. Second [2] one.\nThird") == ["First one.", "Second [2] one.", "Third"]
    assert set(GROUNDING_METRICS) == {"faithfulness", "answer_relevance", "context_precision", "context_recall",
                                      "citation_correctness"}
    assert SUPPORT == grounding.SUPPORT == 0.6
    assert support("", PASSAGE) == 0.0 and grounding_row("", "q", [PASSAGE], None) == {}


def _labelled():
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return data["passages"], data["pairs"]


def test_labelled_set_is_large_balanced_and_well_formed():
    passages, pairs = _labelled()
    assert len(pairs) >= 100
    labels = Counter(p["label"] for p in pairs)
    assert set(labels) == {"supported", "unsupported"} and abs(labels["supported"] - labels["unsupported"]) <= 10
    assert len({p["id"] for p in pairs}) == len(pairs)
    assert len({(p["passage"], p["sentence"]) for p in pairs}) == len(pairs)
    assert all(p["passage"] in passages and p["split"] in ("dev", "holdout", "fresh") for p in pairs)
    kinds = Counter(p["kind"] for p in pairs)
    for kind in ("negation", "number", "date", "swapped_entity", "paraphrase", "negated_paraphrase"):
        assert kinds[kind] >= 5, kind


def _precision_recall(pairs, passages, split=None):
    rows = [(not check(p["sentence"], passages[p["passage"]]).supported, p["label"] == "unsupported")
            for p in pairs if split is None or p["split"] == split]
    tp = sum(f and u for f, u in rows)
    return tp / max(1, sum(f for f, _ in rows)), tp / max(1, sum(u for _, u in rows))


def test_checker_quality_on_the_labelled_set_does_not_regress():
    passages, pairs = _labelled()
    precision, recall = _precision_recall(pairs, passages)
    assert precision >= 0.92 and recall >= 0.88, (precision, recall)  # measured: 0.935, 0.890
    precision, recall = _precision_recall(pairs, passages, "fresh")  # never used to tune the rules
    assert precision >= 0.7 and recall >= 0.8, (precision, recall)  # measured: 0.741, 0.833
    old = [lexical_support(p["sentence"], passages[p["passage"]]) < SUPPORT for p in pairs
           if p["label"] == "unsupported"]
    assert sum(old) / len(old) < 0.1  # word overlap alone misses nearly all of them
