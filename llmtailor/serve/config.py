"""Serving settings: the `serve:` and `registry:` sections of tailor.yaml.

An alias is the name an application puts in `model`: it binds an adapter (or the base, or the current
`@production` / `@staging` deployment) to optional retrieval, guardrails and the tenants allowed to use it,
so applications never need to know run ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Action = Literal["off", "log", "redact", "block"]


class GuardrailConfig(BaseModel):
    """Checks on what goes into and comes out of the model, each with its own action."""

    model_config = ConfigDict(extra="forbid")

    input_pii: Action = Field("off", description="Personal data in the request (Presidio, the data stage's setup).")
    injection: Literal["off", "log", "block"] = Field(
        "off", description="Prompt-injection and jailbreak phrasings in the request."
    )
    deny_topics: list[str] = Field(
        default_factory=list, description="Words or phrases (case-insensitive) the assistant must not discuss."
    )
    deny_action: Literal["log", "block"] = Field("block", description="What a deny-list hit does.")
    output_pii: Action = Field("off", description="Personal data in the answer.")
    output_json: Literal["off", "log", "block"] = Field(
        "off", description="Answers must parse as JSON (and match `json_schema` when set)."
    )
    json_schema: Path | None = Field(None, description="JSON Schema file the answer must match (output_json).")


class AliasConfig(BaseModel):
    """A model name served to applications."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(
        None,
        description="Registered adapter id, run id, adapter folder, '@production' / '@staging' (follows the "
        "deployment table), or unset for the base model.",
    )
    index: Path | None = Field(None, description="RAG index folder: answers cite retrieved passages.")
    top_k: int = Field(4, ge=1, le=50, description="Passages retrieved for a RAG alias.")
    tenants: list[str] = Field(
        default_factory=list, description="Tenants whose keys may use this alias (empty = every tenant)."
    )
    system_prompt: str | None = Field(None, description="Prepended when the request has no system message.")
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig)


class MonitorConfig(BaseModel):
    """`tailor monitor`: when production traffic has moved far enough from the training data to retrain."""

    model_config = ConfigDict(extra="forbid")

    min_queries: int = Field(20, ge=1, description="Below this many logged queries, drift is not judged.")
    max_centroid_distance: float = Field(
        0.15, ge=0, le=2, description="Cosine distance between the mean query and mean training embeddings."
    )
    max_mmd: float = Field(0.1, ge=0, description="Maximum mean discrepancy (RBF kernel) between the two samples.")
    max_topic_shift: float = Field(
        0.3, ge=0, le=1, description="Total variation between the topic (cluster) mixes of queries and training."
    )
    novel_similarity: float = Field(
        0.5, ge=-1, le=1, description="A query whose nearest training example is less similar than this is novel."
    )
    max_novel_share: float = Field(0.3, ge=0, le=1, description="Share of novel queries that calls for retraining.")
    max_thumbs_down_rate: float = Field(0.3, ge=0, le=1, description="Share of rated answers rated down.")
    max_guardrail_hit_rate: float = Field(0.1, ge=0, le=1, description="Share of requests with a guardrail hit.")
    sample: int = Field(500, ge=10, description="At most this many queries and training rows are embedded.")


class ServeConfig(BaseModel):
    """The OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    base_name: str | None = Field(None, description="Model name of the plain base model (default: model.base_model).")
    require_api_key: bool = Field(True, description="Every route except /health needs `Authorization: Bearer KEY`.")
    rate_limit_per_minute: int = Field(120, ge=1, description="Default requests per minute per key.")
    max_batch_size: int = Field(16, ge=1, le=256, description="Requests decoded together in one batch.")
    batch_wait_ms: float = Field(
        8.0, ge=0, le=1000, description="How long the batcher waits for more requests after the first arrives."
    )
    max_tokens_default: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    max_tokens_limit: int = Field(4096, ge=1, description="Larger max_tokens values are rejected (400).")
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (prompt + answer); default: the model's max_position_embeddings."
    )
    max_loaded_adapters: int = Field(8, ge=1, description="Least recently used adapters are unloaded beyond this.")
    prefix_cache_size: int = Field(
        16, ge=0, description="Shared prompt prefixes (system prompt, template) whose KV cache is kept; 0 = off."
    )
    prefix_min_tokens: int = Field(8, ge=1, description="Shorter shared prefixes are not worth caching.")
    default_temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Used when a request gives no temperature; 0 = greedy (reproducible)."
    )
    deployment_poll_s: float = Field(
        2.0, gt=0, description="How often the server re-reads the deployment table (promote/rollback/canary)."
    )
    log_requests: bool = Field(True, description="Log requests (latency, alias, guardrail hits) to the registry.")
    log_content: bool = Field(
        False, description="Also store prompts and answers in the request log (needed for `tailor monitor` drift)."
    )
    aliases: dict[str, AliasConfig] = Field(default_factory=dict, description="Model names applications use.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("max_tokens_default cannot exceed max_tokens_limit")
        return self


class RegistryConfig(BaseModel):
    """Where datasets, runs, adapters, evaluations, deployments and API keys are recorded."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="SQLAlchemy URL (sqlite:///path.db or postgresql+psycopg://...). Default: registry.db next to "
        "tailor.yaml; $LLMTAILOR_REGISTRY_URL overrides.",
    )
    enabled: bool = Field(True, description="Record pipeline stages in the registry.")
