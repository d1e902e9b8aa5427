"""Serving settings: the `serve:` and `registry:` sections of tailor.yaml.

An alias is the name an application puts in `model`: it binds an adapter (or the base, or the current
`@production` / `@staging` deployment) to optional retrieval, guardrails and the tenants allowed to use it,
so applications never need to know run ids. A routing alias (`route:`) binds nothing itself: it picks another
alias or served model per request, by rules on the request or by similarity to example prompts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class RouteRule(BaseModel):
    """Send a request to `to` when every condition given here holds (conditions left unset are not checked)."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="Target: another alias, the base model name, the project name or '<project>:staging'.")
    min_prompt_tokens: int | None = Field(
        None, ge=0, description="The rendered prompt (all messages, chat template) has at least this many tokens."
    )
    max_prompt_tokens: int | None = Field(None, ge=0, description="The rendered prompt has at most this many tokens.")
    contains_any: list[str] = Field(
        default_factory=list, description="The last user message contains one of these (case-insensitive)."
    )
    regex: str | None = Field(None, description="The last user message matches this Python regex (re.search).")
    response_format: Literal["json", "text"] | None = Field(
        None, description="'json': the request asks for a JSON response_format; 'text': it does not."
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"invalid regex {v!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _has_condition(self) -> RouteRule:
        if (self.min_prompt_tokens is None and self.max_prompt_tokens is None and not self.contains_any
                and self.regex is None and self.response_format is None):
            raise ValueError(f"a rule for {self.to!r} has no condition; use route.default for the fallback")
        return self


class RouteClassifier(BaseModel):
    """Route by meaning: the target whose example prompts are most similar to the last user message."""

    model_config = ConfigDict(extra="forbid")

    examples: dict[str, list[str]] = Field(
        description="Target -> example prompts it should get (embedded once with the RAG embedder).", min_length=1
    )
    min_similarity: float = Field(
        0.0, ge=-1, le=1, description="Below this cosine similarity to every example, route.default is used."
    )

    @field_validator("examples")
    @classmethod
    def _non_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        empty = [t for t, ex in v.items() if not [e for e in ex if e.strip()]]
        if empty:
            raise ValueError(f"target(s) {', '.join(map(repr, empty))} have no example prompts")
        return v


class RouteConfig(BaseModel):
    """Rules in order (first match wins), then the classifier, then `default`."""

    model_config = ConfigDict(extra="forbid")

    rules: list[RouteRule] = Field(default_factory=list, description="Checked in order; the first match routes.")
    classifier: RouteClassifier | None = Field(None, description="Used when no rule matched.")
    default: str = Field(description="Target when no rule matched and the classifier (if any) was not confident.")

    def targets(self) -> list[str]:
        """Every name this route can send a request to."""
        names = [r.to for r in self.rules] + list(self.classifier.examples if self.classifier else []) + [self.default]
        return list(dict.fromkeys(names))


# What a routing alias may not set itself: its targets answer, with their own adapter, index and guardrails.
_NOT_WITH_ROUTE = ("adapter", "index", "top_k", "system_prompt", "guardrails")


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
    system_prompt: str | None = Field(
        None, description="The operator's system prompt, always first; a client's leading system message is "
        "appended after it in the same message, never in its place.")
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig)
    route: RouteConfig | None = Field(
        None, description="Make this a routing alias: each request goes to one of its targets (rules, classifier)."
    )


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
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="Larger request bodies are refused (413) before they are read or parsed."
    )
    metrics_tenants: list[str] | None = Field(
        None, description="Tenants whose keys with models '*' may read /metrics and /health details (they name "
        "every tenant's aliases and adapters). Default: the tenant named like `project`."
    )
    rate_limit_per_minute: int = Field(120, ge=1, description="Default requests per minute per key.")
    engine: Literal["auto", "transformers", "llamacpp"] = Field(
        "auto", description="Decoding engine. auto: llama.cpp on CPU when llama-cpp-python is installed "
        "(`pip install 'llmtailor[llamacpp]'`) and the base has a GGUF, else transformers. `tailor serve --engine` "
        "overrides it (also `vllm`, a separate server).")
    llamacpp_slots: int = Field(
        4, ge=1, le=64, description="llama.cpp engine: requests decoded at once (one context each, round-robin).")
    llamacpp_threads: int | None = Field(
        None, ge=1, description="llama.cpp engine: threads per decode (default: every core this process may use). "
        "On a machine busy with other work, fewer threads than cores avoid stalls at llama.cpp's thread barriers.")
    llamacpp_flash_attn: bool = Field(
        True, description="llama.cpp engine: flash attention in each context (what llama-server picks by default on "
        "CPU); off reproduces the plain attention kernels (bench/results/serve.md measures both).")
    lean_decode: bool = Field(
        True, description="transformers engine: decoding steps of a plain Llama-family model on CPU run a lean "
        "forward on the model's own weights (llmtailor/serve/lean.py; the same logits, fewer operations); off = "
        "transformers' forward for every step (bench/results/serve.md measures both).")
    max_batch_size: int = Field(16, ge=1, le=256, description="Requests decoded together in one batch.")
    max_queue: int = Field(
        256, ge=1, description="Requests waiting for a decoding slot; when full, new ones get 503 with Retry-After "
        "(waiting requests are admitted round-robin across API keys).")
    batch_wait_ms: float = Field(
        8.0, ge=0, le=1000, description="How long the batcher waits for more requests after the first arrives."
    )
    stream_interval_ms: float = Field(
        0.0, ge=0, le=1000, description="Streaming: after a chunk is sent, later tokens of the same answer wait this "
        "long and go out together in one chunk (fewer wake-ups of the server's event loop and of the client). The "
        "first token and the end of an answer are never held. 0 = one chunk per token whenever the server keeps up.")
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
        0.5, gt=0, description="How often the server re-reads the deployment table (promote/rollback/canary)."
    )
    log_requests: bool = Field(True, description="Log requests (latency, alias, guardrail hits) to the registry.")
    log_content: bool = Field(
        False, description="Also store prompts and answers in the request log (needed for `tailor monitor` drift)."
    )
    shadow_max_inflight: int = Field(
        4, ge=1, description="Shadow answers generated at once; copies beyond this are dropped (and counted)."
    )
    aliases: dict[str, AliasConfig] = Field(default_factory=dict, description="Model names applications use.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("max_tokens_default cannot exceed max_tokens_limit")
        for name, alias in self.aliases.items():
            if alias.route is not None:
                _check_routing_alias(name, alias, self.aliases)
        _check_route_cycles(self.aliases)
        return self

    def check_route_targets(self, served: set[str]) -> None:
        """Every route target is an alias or one of the `served` names (base, project, project:staging)."""
        for name, alias in self.aliases.items():
            for target in alias.route.targets() if alias.route else []:
                if target not in self.aliases and target not in served:
                    known = ", ".join(sorted({*self.aliases, *served} - {name}))
                    raise ValueError(f"alias '{name}': route target '{target}' is not an alias or a served model "
                                     f"name (known: {known}); to route to an adapter, give it an alias")


def _check_routing_alias(name: str, alias: AliasConfig, aliases: dict[str, AliasConfig]) -> None:
    """A routing alias sets nothing its targets own, and never widens who may reach a tenant-restricted alias."""
    clash = [f for f in _NOT_WITH_ROUTE if f in alias.model_fields_set]
    if clash:
        raise ValueError(f"alias '{name}' routes requests (route:), so it cannot also set {', '.join(clash)}; "
                         "set those on its targets")
    assert alias.route is not None
    for target in alias.route.targets():
        allowed = aliases[target].tenants if target in aliases else []
        if allowed and (not alias.tenants or not set(alias.tenants) <= set(allowed)):
            who = ", ".join(alias.tenants) if alias.tenants else "every tenant"
            raise ValueError(f"alias '{name}' routes to '{target}', which only tenants {', '.join(allowed)} may use, "
                             f"but '{name}' is open to {who}; restrict '{name}' to those tenants")


def _check_route_cycles(aliases: dict[str, AliasConfig]) -> None:
    """Routing aliases that reach themselves would never answer."""
    def visit(name: str, path: list[str]) -> None:
        if name in path:
            loop = " -> ".join([*path[path.index(name):], name])
            raise ValueError(f"alias '{path[path.index(name)]}': routing cycle {loop}")
        route = aliases[name].route if name in aliases else None
        for target in route.targets() if route else []:
            visit(target, [*path, name])

    for name in aliases:
        visit(name, [])


def served_base_name(base_model: str, base_name: str | None) -> str:
    """The model name of the plain base: `serve.base_name`, else the base model's folder name."""
    if base_name:
        return base_name
    return Path(base_model).name if ("/" in base_model or "\\" in base_model) else base_model


class RegistryConfig(BaseModel):
    """Where datasets, runs, adapters, evaluations, deployments and API keys are recorded."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="SQLAlchemy URL (sqlite:///path.db or postgresql+psycopg://...). Default: registry.db next to "
        "tailor.yaml; $LLMTAILOR_REGISTRY_URL overrides.",
    )
    enabled: bool = Field(True, description="Record pipeline stages in the registry.")
