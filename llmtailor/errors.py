"""Errors that a user can act on: each names the file, line and field at fault."""

from __future__ import annotations

from pathlib import Path


class TailorError(Exception):
    """Any problem caused by input or environment; the CLI prints it and exits 1 (no traceback)."""


class RowError(TailorError):
    """A problem with one row or key of an input file, located as `file:line: field: problem`."""

    def __init__(self, file: str | Path | None, line: int | None, field: str | None, problem: str):
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(self.location() + problem)

    def location(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.line is not None:
            parts.append(str(self.line))
        prefix = ":".join(parts)
        if prefix:
            prefix += ": "
        if self.field:
            prefix += f"{self.field}: "
        return prefix

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "problem": self.problem}


class ConfigError(RowError):
    """A bad key or value in tailor.yaml."""


class ModelNotFoundError(TailorError):
    """The base model is neither a known packaged name nor a local Hugging Face folder."""


class UnsupportedAdapter(TailorError):
    """An adapter the serving engine cannot apply (DoRA on llama.cpp): the client's request, not the server, is at
    fault, so the API answers 400 with the reason."""
