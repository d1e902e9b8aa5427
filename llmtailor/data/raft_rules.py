"""Questions from a passage without any model: a heading that is a question, or a sentence holding a fact.

Used by `tailor data raft` when no generator is configured. A sentence holding a duration, amount, percentage,
date, year, time, count or a definition ("X is a ...") becomes a question by replacing the fact with its
question phrase ("within 14 days" -> "within how many days"); the answer is the sentence, the fact span is what a
correct answer must contain. Deterministic: the same passage always gives the same questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred").split()
_WORD_NUM = rf"(?:{'|'.join(_WORDS)})(?:-(?:{'|'.join(_WORDS[:9])}))?"
_NUM = rf"(?:\d[\d,]*(?:\.\d+)?|{_WORD_NUM})"
_UNIT = r"(?:(?:business|working|calendar|full)\s+)?(?:days?|weeks?|months?|years?|hours?|minutes?|seconds?)"
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"

# (kind, pattern, question phrase): the phrase may use {unit}/{noun}, the matched unit or counted noun.
_RULES: list[tuple[str, re.Pattern[str], str]] = [
    ("amount", re.compile(r"(?:[$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:million|billion))?"
                          r"|\b\d[\d,]*(?:\.\d+)?\s?(?:euros?|dollars?|pounds?|USD|EUR|GBP)\b)", re.I), "how much"),
    ("percent", re.compile(r"\b\d+(?:\.\d+)?\s?(?:%|percent\b)", re.I), "what percentage"),
    ("duration", re.compile(rf"\b{_NUM}\s+(?P<unit>{_UNIT})\b", re.I), "how many {unit}"),
    ("date", re.compile(rf"\b(?:\d{{1,2}}\s+{_MONTH}(?:\s+\d{{4}})?|{_MONTH}\s+\d{{1,2}}(?:,\s*\d{{4}})?)\b"),
     "what date"),
    ("year", re.compile(r"\bin\s+(?P<fact>(?:1[89]\d\d|20\d\d))\b"), "in what year"),
    ("time", re.compile(r"\b\d{1,2}(?::\d\d)?\s?(?:a\.m\.|p\.m\.|am\b|pm\b)", re.I), "what time"),
    ("count", re.compile(rf"\b(?!one\b){_NUM}\s+(?P<noun>[a-z][a-z-]{{2,}})\b", re.I), "how many {noun}"),
]
_DEFINITION = re.compile(r"^(?P<x>[A-Z][^,;:()]{2,60}?)\s+(?P<verb>is|are|means|refers to)\s+"
                         r"(?P<y>(?:a|an|the|any|every)\s.{8,})$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NOT_NOUNS = {"and", "or", "of", "to", "in", "on", "at", "for", "the", "a", "an", "per", "by", "from", "with", "is",
              "are", "was", "were", "has", "have", "than", "more", "less", "times", "percent"}


@dataclass(frozen=True)
class RuleQuestion:
    """A question, the sentence that answers it, the fact span a correct answer contains, and the rule used."""

    question: str
    answer: str
    fact: str
    kind: str


def sentences(text: str) -> list[str]:
    """Whole sentences of a passage: markdown markers dropped, fragments (cut by chunk overlap) left out."""
    out: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:#+|[-*•]|\d+[.)])\s+", "", line).replace("**", "").strip()
        if not line:
            continue
        for s in _SENTENCE_END.split(line):
            s = s.strip()
            if s[:1].isupper() or s[:1].isdigit():
                if s[-1:] in ".!?" and 4 <= len(s.split()) <= 60:
                    out.append(s)
    return out


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _as_question(sentence: str, start: int, end: int, phrase: str) -> str:
    body = (sentence[:start] + phrase + sentence[end:]).strip().rstrip(".!?").strip()
    return _capital(body) + "?"


def fact_questions(sentence: str) -> list[RuleQuestion]:
    """Every fact of `sentence` as a question (one per fact span, spans never overlapping), or its definition."""
    if sentence.endswith("?"):
        return []
    answer = sentence.rstrip(".!? ")
    out: list[RuleQuestion] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern, template in _RULES:
        for m in pattern.finditer(sentence):
            if any(m.start() < b and a < m.end() for a, b in taken):
                continue
            groups = m.groupdict()
            noun = (groups.get("noun") or "").lower()
            if kind == "count" and (noun in _NOT_NOUNS or not noun.endswith("s")):
                continue  # "3 of", "1998 and", "1 router": not a count of things
            unit = (groups.get("unit") or "").lower()
            unit = unit if unit.endswith("s") else unit + "s"
            phrase = template.format(unit=unit, noun=noun)
            end = m.end()
            if kind == "count":  # the counted noun stays in the question: "how many employees"
                end = m.start("noun") + len(m.group("noun"))
            fact = groups.get("fact") or m.group(0)
            taken.append((m.start(), m.end()))
            out.append(RuleQuestion(_as_question(sentence, m.start(), end, phrase), answer, fact.strip(), kind))
    if out:
        return out
    d = _DEFINITION.match(answer)
    if d:
        x = d.group("x")
        first = x.split()[0]
        if first in ("The", "A", "An"):
            x = first.lower() + x[len(first):]
        verb = "are" if d.group("verb") == "are" else "is"
        return [RuleQuestion(f"What {verb} {x}?", answer, d.group("y").strip(), "definition")]
    return []


def rule_questions(text: str, heading_path: str, limit: int) -> list[RuleQuestion]:
    """Up to `limit` questions for one passage: its heading when that is a question (answered by the first
    sentence), then the facts of its sentences in passage order."""
    found: list[RuleQuestion] = []
    sents = sentences(text)
    heading = heading_path.split(">")[-1].strip() if heading_path else ""
    used: set[str] = set()
    if heading.endswith("?") and len(heading.split()) >= 3 and sents:
        first = sents[0]
        fq = fact_questions(first)
        fact = fq[0].fact if fq else first.rstrip(".!? ")
        found.append(RuleQuestion(heading, first.rstrip(".!? "), fact, "heading"))
        used.add(first)
    for s in sents:
        if s not in used:
            found.extend(fact_questions(s))
    return found[:limit]
