"""Data stage: validate chat/Alpaca JSONL, drop duplicates, redact PII, split, and version the result.

Entry points: `llmtailor.data.prepare.prepare(cfg, tokenizer)` and `validate_file(path)`.
`llmtailor.config` imports `DataConfig` from here, so this package stays light: the other names
are imported on first use. (`prepare` is not re-exported: it is also the name of its module.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtailor.data.config import DataConfig, DedupConfig, PiiConfig, SourceConfig, SplitConfig

if TYPE_CHECKING:
    from llmtailor.data.validate import ValidationReport, validate_file
    from llmtailor.data.versions import DatasetVersion, load_version

__all__ = [
    "DataConfig",
    "DatasetVersion",
    "DedupConfig",
    "PiiConfig",
    "SourceConfig",
    "SplitConfig",
    "ValidationReport",
    "load_version",
    "validate_file",
]

_LAZY = {
    "ValidationReport": "llmtailor.data.validate",
    "validate_file": "llmtailor.data.validate",
    "DatasetVersion": "llmtailor.data.versions",
    "load_version": "llmtailor.data.versions",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmtailor.data' has no attribute {name!r}")
