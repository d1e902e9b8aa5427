"""Grounding metrics for RAG variants, computed locally and deterministically (no judge model, no NaN).

Method (documented in docs/eval.md; the support check lives in `llmtailor.eval.claims`):

* A sentence is *supported* by a passage when at least `SUPPORT` (60%) of its content words occur in it (lowercase
  Snowball stems minus stop words, numbers read as values: "fourteen" = "14") **and** no rule finds a conflict:
  a number, date, unit or bound the passage does not have ("14 days" vs "30 days", "at least" vs "at most",
  "14 June" vs "15 June"), a negation or opposite word the passage's matching clause does not share ("X is not due"
  vs "X is due", "include" vs "exclude"), or a name the passage lacks or has replaced ("in Amsterdam" vs "in
  Rotterdam"). Measured on tests/data/faithfulness_pairs.json by bench/faithfulness.py.
* faithfulness = supported answer sentences / answer sentences, each checked against all retrieved passages.
* answer_relevance = share of the question's content words that the answer uses (does it address the question).
* context_precision = average precision of the ranked passages, a passage counting as relevant when it supports
  at least one reference sentence; context_recall = reference sentences supported by some passage / all.
* citation_correctness = cited sentences ([n]) whose cited passage supports them / cited sentences.

A row that cannot be scored (empty answer, no passages, no reference, no citation) is left out of that metric
and counted under `grounding_unscorable`; an aggregate with no scorable row is None, never NaN. A row where the
assistant abstained ("I don't know" without asking the model) has no answer to check: only the retrieval metrics
(context precision and recall) score it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmtailor.eval.claims import SUPPORT, check

__all__ = ["GROUNDING_METRICS", "STOP", "SUPPORT", "content_words", "grounding_row", "grounding_scores",
           "lexical_support", "sentences", "support", "supported"]
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")
_CITE = re.compile(r"\[(\d{1,3})\]")
STOP = frozenset(
    "a an the and or but if then else of to in on at by for with from as is are was were be been being it its this "
    "that these those i you he she we they me him her us them my your his our their what which who whom whose when "
    "where why how all any both each few more most other some such no nor not only own same so than too very can "
    "will just do does did done have has had having should would could may might must shall about above after "
    "again against below between into through during before under over up down out off further once here there "
    "also please thanks thank yes ok okay".split()
)


def _stem(w: str) -> str:
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 2 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def content_words(text: str | None) -> set[str]:
    """Lowercase content-word stems of a text."""
    return {_stem(w) for w in _WORD.findall((text or "").lower()) if w not in STOP}


def sentences(text: str | None) -> list[str]:
    """Sentences (or lines) that carry at least one content word; citation markers removed."""
    out = []
    for s in _SENT.split(text or ""):
        if content_words(_CITE.sub(" ", s)):
            out.append(s.strip())
    return out


def lexical_support(sentence: str, passage: str) -> float:
    """Share of the sentence's content words found in the passage: the word-overlap score alone, blind to
    negation and changed numbers (the scorer before `claims.check`; kept for comparison in bench/faithfulness.py)."""
    words = content_words(_CITE.sub(" ", sentence))
    if not words:
        return 0.0
    return len(words & content_words(passage)) / len(words)


def support(sentence: str, passage: str) -> float:
    """Share of the sentence's content words found in the passage, or 0.0 when the passage contradicts it
    (`claims.check`); >= SUPPORT exactly when the passage supports the sentence."""
    return check(_CITE.sub(" ", sentence), passage).score


def supported(sentence: str, passages: Sequence[str]) -> bool:
    return any(check(_CITE.sub(" ", sentence), p).supported for p in passages)


def grounding_row(answer: str, question: str, passages: Sequence[str], reference: str | None,
                  abstained: bool = False) -> dict:
    """Per-row grounding scores; a metric that does not apply to the row is absent."""
    row: dict = {}
    if abstained:
        answer = ""
    claims = sentences(answer)
    if claims and passages:
        row["faithfulness"] = sum(supported(c, passages) for c in claims) / len(claims)
    q_words = content_words(question)
    if q_words and answer and answer.strip():
        row["answer_relevance"] = len(q_words & content_words(answer)) / len(q_words)
    ref_sents = sentences(reference) if reference else []
    if ref_sents and passages:
        relevant = [any(support(s, p) >= SUPPORT for s in ref_sents) for p in passages]
        hits, precisions = 0, []
        for rank, rel in enumerate(relevant, start=1):
            if rel:
                hits += 1
                precisions.append(hits / rank)
        row["context_precision"] = sum(precisions) / hits if hits else 0.0
        row["context_recall"] = sum(supported(s, passages) for s in ref_sents) / len(ref_sents)
    cited = [(s, [int(n) for n in _CITE.findall(s)]) for s in _SENT.split(answer or "") if _CITE.search(s)]
    if cited and passages:
        ok = 0
        for sent, numbers in cited:
            valid = [passages[n - 1] for n in numbers if 1 <= n <= len(passages)]
            ok += bool(valid) and any(support(sent, p) >= SUPPORT for p in valid)
        row["citation_correctness"] = ok / len(cited)
    return row


GROUNDING_METRICS = ("faithfulness", "answer_relevance", "context_precision", "context_recall",
                     "citation_correctness")


def grounding_scores(
    answers: Sequence[str], questions: Sequence[str], contexts: Sequence[Sequence[str]], refs: Sequence[str | None],
    abstained: Sequence[bool] | None = None,
) -> tuple[dict, list[dict]]:
    """Aggregate means plus per-row dicts; `grounding_unscorable` counts rows each metric could not score."""
    flags = abstained if abstained is not None else [False] * len(answers)
    rows = [grounding_row(a, q, c, r, x)
            for a, q, c, r, x in zip(answers, questions, contexts, refs, flags, strict=True)]
    agg: dict = {}
    unscorable: dict[str, int] = {}
    for m in GROUNDING_METRICS:
        vals = [r[m] for r in rows if m in r]
        agg[m] = sum(vals) / len(vals) if vals else None
        unscorable[m] = len(rows) - len(vals)
    agg["grounding_unscorable"] = unscorable
    return agg, rows
