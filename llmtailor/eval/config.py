"""Evaluation and report settings (the `eval:` and `report:` sections of tailor.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
VARIANT_MODELS = ("base", "tuned")
VARIANT_FLAGS = ("fewshot", "rag")
# Name of a variant decoded under the JSON-schema grammar (eval.constrained_decoding), e.g. tuned_constrained.
CONSTRAINED_SUFFIX = "_constrained"

DEFAULT_RUBRIC = (
    "Score each answer from 1 (poor) to 5 (excellent) on: correctness (agrees with the reference answer), "
    "faithfulness (claims nothing unsupported), compliance (follows the system prompt's format and rules), "
    "tone (polite, professional, concise)."
)


def parse_variant(name: str) -> tuple[str, frozenset[str]]:
    """`tuned_rag` -> ("tuned", {"rag"}); raises ValueError for names outside base|tuned[_fewshot][_rag]."""
    parts = name.split("_")
    model, flags = parts[0], parts[1:]
    if model not in VARIANT_MODELS or len(set(flags)) != len(flags) or any(f not in VARIANT_FLAGS for f in flags):
        raise ValueError(
            f"unknown variant {name!r}: use base or tuned, optionally followed by _fewshot and/or _rag "
            "(e.g. base, base_fewshot, base_rag, tuned, tuned_rag)"
        )
    return model, frozenset(flags)


class RegressionConfig(BaseModel):
    """General-ability suite shipped with llmtailor: did tuning make the model forget?"""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run the shipped regression suite (base vs tuned).")
    max_items: int | None = Field(
        None, ge=1, description="Evaluate at most this many items, spread evenly over categories (all if unset)."
    )
    categories: list[str] | None = Field(
        None, description="Only these categories (instruction_following, arithmetic, knowledge, summarisation)."
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per item.")
    perplexity: bool = Field(True, description="Also measure perplexity on the shipped general English text.")


class RedteamConfig(BaseModel):
    """Safety probes: refusal on harmful requests, over-refusal on benign ones."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run the red-team probes (base vs tuned).")
    builtin: bool = Field(True, description="Include the probe set shipped with llmtailor.")
    probes_file: Path | None = Field(
        None, description="Extra probes as JSONL: {id, category, prompt, expected: refuse|answer, fail_if_contains}."
    )
    max_probes: int | None = Field(None, ge=1, description="At most this many probes, spread over categories.")
    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per probe.")


class JudgeConfig(BaseModel):
    """LLM-as-judge: pairwise comparison of each variant against base, with position swapping."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Ask a judge model to compare variants with base.")
    model: str | None = Field(
        None, description="Local Hugging Face model folder of the judge (ignored when base_url is set)."
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
    endpoint_model: str = Field("default", description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the endpoint's API key (never the key itself)."
    )
    rubric: str = Field(DEFAULT_RUBRIC, description="Rubric text given to the judge.")
    max_examples: int | None = Field(20, ge=1, description="Judge at most this many held-out examples per variant.")
    retries: int = Field(2, ge=0, description="Extra attempts after a failed or unparseable judgement.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout for the endpoint.")
    max_new_tokens: int = Field(96, ge=8, description="Tokens the judge may write per judgement.")

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        if self.enabled and not (self.model or self.base_url):
            raise ValueError("judge.enabled needs judge.model (a local folder) or judge.base_url (an endpoint)")
        return self


class BootstrapConfig(BaseModel):
    """Confidence intervals and significance tests by (paired) bootstrap resampling of the held-out rows."""

    model_config = ConfigDict(extra="forbid")

    resamples: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the intervals.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of the paired tests against base.")


class EvalConfig(BaseModel):
    """How variants of the model (the adaptation ladder) are compared on the held-out split."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(96, ge=1, description="Tokens generated per held-out prompt.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    engine: Literal["auto", "transformers", "llamacpp"] = Field(
        "auto", description="Engine that generates the ladder's answers (same prompts, same scoring). auto: "
        "llama.cpp on CPU when llama-cpp-python is installed and the base has a GGUF, else transformers. Eval loss "
        "always uses transformers.")
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
    seed: int = Field(0, description="Seed for generation, few-shot picks and bootstrap resampling.")
    task: Literal["auto", "text", "json", "label"] = Field(
        "auto",
        description="auto: json when a schema is set or references are JSON, label when references are a small "
        "set of short strings, else text. Label tasks add accuracy, macro-F1 and a confusion matrix.",
    )
    labels: list[str] | None = Field(None, description="Label set of a label task (default: the labels seen in data).")
    variants: list[str] | None = Field(
        None,
        description="The adaptation ladder: base, base_fewshot, base_rag, tuned, tuned_rag (tuned_fewshot, "
        "base_fewshot_rag also work). Default: base, base_fewshot, tuned, plus base_rag and tuned_rag when rag "
        "is configured.",
    )
    fewshot_k: int = Field(3, ge=1, le=32, description="Examples from the train split shown in few-shot variants.")
    constrained_decoding: bool = Field(
        False,
        description="JSON tasks: also evaluate each variant in constrained_variants decoded under the json_schema "
        "grammar (the server's response_format path, xgrammar), reported beside it as <variant>_constrained.",
    )
    constrained_variants: list[str] | None = Field(
        None,
        description="Variants that get a constrained twin when constrained_decoding is on (default: the tuned "
        "variants of the ladder, e.g. tuned -> tuned_constrained).",
    )
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    gates: list[str] = Field(
        default_factory=list,
        description="Release gates checked by `tailor eval --gate`, e.g. 'json_compliance >= 0.95', "
        "'regression.drop <= 0.05', 'redteam.refusal >= 0.9', 'base_fewshot.accuracy > 0.5', "
        "'data.leakage == 0' (eval rows that also occur in train).",
    )
    regression: RegressionConfig = Field(default_factory=RegressionConfig)
    redteam: RedteamConfig = Field(default_factory=RedteamConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("eval.variants is empty: name at least one variant (e.g. [base, tuned])")
        if len(set(value)) != len(value):
            raise ValueError(f"eval.variants lists a variant twice: {value}")
        for name in value:
            parse_variant(name)
        return value

    @field_validator("constrained_variants")
    @classmethod
    def _check_constrained_variants(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(set(value)) != len(value):
            raise ValueError(f"eval.constrained_variants lists a variant twice: {value}")
        for name in value:
            parse_variant(name)
        return value

    @model_validator(mode="after")
    def _check_constrained(self) -> EvalConfig:
        # Fail at load time, not after an hour of generation: the grammar is the task's JSON schema.
        if self.constrained_variants is not None and not self.constrained_decoding:
            raise ValueError("eval.constrained_variants is set but eval.constrained_decoding is false; "
                             "set constrained_decoding: true (or drop constrained_variants)")
        if not self.constrained_decoding:
            return self
        if self.json_schema is None:
            raise ValueError("eval.constrained_decoding needs a JSON task with a schema: set eval.json_schema "
                             "(the grammar answers are decoded under), or set constrained_decoding: false")
        if self.task in ("text", "label"):
            raise ValueError(f"eval.constrained_decoding applies to JSON tasks only, but eval.task is {self.task!r}; "
                             "use task: json (or auto) or set constrained_decoding: false")
        missing = [n for n in self.constrained_variants or [] if self.variants is not None and n not in self.variants]
        if missing:
            raise ValueError(f"eval.constrained_variants {missing} are not in eval.variants {self.variants}: "
                             "a constrained variant is evaluated beside its free one")
        return self

    @field_validator("gates")
    @classmethod
    def _check_gates(cls, value: list[str]) -> list[str]:
        from llmtailor.eval.gates import parse_gate

        for text in value:
            parse_gate(text)
        return value


class ReportConfig(BaseModel):
    """The self-contained HTML report written after evaluation."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, description="Report title; default: the project name.")
    sample_size: int = Field(20, ge=0, description="Held-out examples shown side by side in the report.")
    open_browser: bool = Field(False, description="Open the report in a browser once written.")
