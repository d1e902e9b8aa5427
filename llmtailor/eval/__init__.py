"""Evaluation: text and JSON metrics, and the self-contained HTML report.

Imports are lazy: `llmtailor.config` imports `llmtailor.eval.config`, and the metric libraries
(rouge-score pulls in NLTK) must not slow down every CLI call.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalConfig": "llmtailor.eval.config",
    "ReportConfig": "llmtailor.eval.config",
    "normalize_text": "llmtailor.eval.metrics",
    "exact_match": "llmtailor.eval.metrics",
    "token_f1": "llmtailor.eval.metrics",
    "rouge_l": "llmtailor.eval.metrics",
    "bleu_corpus": "llmtailor.eval.metrics",
    "parse_json_output": "llmtailor.eval.metrics",
    "json_compliance": "llmtailor.eval.metrics",
    "field_accuracy": "llmtailor.eval.metrics",
    "score_examples": "llmtailor.eval.metrics",
    "load_schema": "llmtailor.eval.metrics",
    "write_report": "llmtailor.eval.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
