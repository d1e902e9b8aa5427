"""Distillation settings (`distill:` in tailor.yaml): who teaches, on which prompts, which answers count."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmtailor.data.generator import GeneratorConfig


class LogitDistillConfig(BaseModel):
    """KL to the teacher's token distribution, mixed with cross-entropy (needs a local teacher, same tokenizer)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Train on the teacher's softened distribution as well as its tokens.")
    temperature: float = Field(2.0, gt=0.0, le=20.0, description="Softening temperature T of both distributions.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="loss = alpha * T^2 * KL + (1 - alpha) * CE.")


class DistillConfig(BaseModel):
    """A teacher answers the prompts; the student (model.base_model) is fine-tuned on the answers it got right."""

    model_config = ConfigDict(extra="forbid")

    teacher: GeneratorConfig = Field(description="Local model folder, a run's adapter (run: latest) or an endpoint.")
    prompts: Literal["train", "synthetic", "both"] = Field(
        "train", description="Prompts the teacher answers: the train split's, synth.output's, or both."
    )
    output: Path = Field(Path("data/distilled.jsonl"), description="Teacher answers, appended as they come.")
    max_prompts: int | None = Field(None, ge=1, description="Use at most this many prompts.")
    max_new_tokens: int = Field(192, ge=8, description="Token budget of a teacher answer.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Teacher sampling temperature (0: greedy).")
    min_judge_score: float | None = Field(
        None, ge=1.0, le=10.0, description="Keep answers eval.judge scores at least this (1-10); unset: no judge."
    )
    max_consecutive_failures: int = Field(3, ge=1, description="Stop (answers kept, resumable) after this many "
                                          "teacher failures in a row.")
    logit: LogitDistillConfig = Field(default_factory=LogitDistillConfig)

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        t = self.teacher
        if not (t.model or t.adapter or t.run or t.base_url):
            raise ValueError("distill.teacher needs model (a folder), adapter, run (e.g. latest) or base_url")
        if self.logit.enabled and t.base_url:
            raise ValueError("distill.logit needs a local teacher: an endpoint returns text, not token distributions")
        return self
