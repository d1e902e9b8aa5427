"""Evaluation and report settings (the `eval:` and `report:` sections of tailor.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MetricName = Literal["loss", "exact_match", "token_f1", "rouge_l", "bleu", "json_compliance", "field_accuracy"]
ALL_METRICS: list[MetricName] = [
    "loss",
    "exact_match",
    "token_f1",
    "rouge_l",
    "bleu",
    "json_compliance",
    "field_accuracy",
]


class EvalConfig(BaseModel):
    """How the base and tuned models are compared on the held-out split."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(96, ge=1, description="Tokens generated per held-out prompt.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    max_examples: int | None = Field(None, ge=1, description="Evaluate at most this many held-out rows (all if unset).")
    json_schema: Path | None = Field(
        None,
        description="JSON Schema file; when set, outputs are parsed as JSON and validated against it "
        "(relative to the YAML file).",
    )
    metrics: list[MetricName] = Field(
        default_factory=lambda: list(ALL_METRICS),
        description="Metrics to compute: loss, exact_match, token_f1, rouge_l, bleu, json_compliance, field_accuracy.",
    )
    seed: int = Field(0, description="Seed for generation and sampling of held-out rows.")


class ReportConfig(BaseModel):
    """The self-contained HTML report written after evaluation."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, description="Report title; default: the project name.")
    sample_size: int = Field(20, ge=0, description="Held-out examples shown side by side in the report.")
    open_browser: bool = Field(False, description="Open the report in a browser once written.")
