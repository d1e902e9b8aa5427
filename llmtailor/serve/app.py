"""The OpenAI-compatible HTTP API over the engine, the registry (keys, deployments, logs) and RAG aliases.

Requests are validated here and turned into token ids with `chat.prompt_ids`, the renderer training and
evaluation use. Every failure answers in OpenAI's error shape (`{"error": {message, type, param, code}}`)
with the status code the official SDK maps to the right exception class. A caller's tenant, groups and
clearance come from its API key only; nothing in the request body can widen what it may see.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmtailor.chat import prompt_ids, render_prompt
from llmtailor.errors import TailorError, UnsupportedAdapter
from llmtailor.serve.config import AliasConfig, GuardrailConfig, served_base_name
from llmtailor.serve.engine import ContextLengthError, Engine, Event, EventStream, GenRequest, QueueFull
from llmtailor.serve.guardrails import check_input, check_output, check_passages, load_schema, output_checks_enabled
from llmtailor.serve.metrics import Metrics
from llmtailor.serve.routing import RouteInput, Router
from llmtailor.serve.shadow import ShadowJob, ShadowRunner, ShadowTarget
from llmtailor.serve.structured import ResponseFormatError, parse_response_format, validate

log = logging.getLogger("llmtailor.serve")


class APIError(Exception):
    """An error the client caused (or a server fault), in OpenAI's shape.

    `detail` is for the server log only: exception text can carry paths, SQL or library internals, so a fault's
    answer says what failed and a request id, and the log line with that id says why.
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, detail: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        headers.update(self.headers)
        if request_id:
            headers["x-request-id"] = request_id
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


def _fault(status: int, what: str, exc: BaseException | str, **kw: Any) -> APIError:
    """A server-side failure: `what` is answered, the exception text only logged (see APIError)."""
    detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return APIError(status, what, type="server_error", detail=detail, **kw)


def _logged(exc: APIError, request_id: str, where: str) -> APIError:
    """The answer for a fault whose detail is logged now under `request_id` (the client quotes it to the operator)."""
    log.error("%s failed (request id %s): %s", where, request_id, exc.detail)
    return APIError(exc.status, f"{exc.message.rstrip('.')} (request id {request_id}; details in the server log).",
                    type=exc.type, param=exc.param, code=exc.code, headers=exc.headers)


def _busy(e: QueueFull) -> APIError:
    """The engine's queue is full: 503 with Retry-After, which the OpenAI SDK honours when it retries."""
    return APIError(503, f"The server is overloaded: {e} Retry shortly.", type="server_error",
                    code="server_overloaded", headers={"Retry-After": "1"})


# ---- request bodies ------------------------------------------------------------------------------
class _Lenient(BaseModel):
    # The SDK sends fields we ignore (presence_penalty, logit_bias, ...): accept them, as OpenAI does.
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class SamplingFields(_Lenient):
    model: str
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None  # sampled answers repeat for the same seed, prompt and settings (as OpenAI's best effort)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool = False


class EmbeddingRequest(_Lenient):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="The `id` of a completion this key received.")
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=4000)


def _parse(model: type[BaseModel], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        param = loc[0] if loc else None
        if err["type"] == "missing":
            msg = f"Missing required parameter: '{'.'.join(loc)}'."
        else:
            msg = f"Invalid value for '{'.'.join(loc)}': {err['msg']}."
        raise APIError(400, msg, param=param, code="missing_required_parameter" if err["type"] == "missing"
                       else "invalid_value") from None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def _body(request: Request, limit: int) -> Any:
    """The JSON body, refused with 413 once it passes `limit` bytes (declared or counted), before it is parsed."""
    too_large = APIError(413, f"The request body is larger than {limit} bytes (serve.max_request_bytes).",
                         code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads declare no length: count what arrives
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}).", code="invalid_json") from None
    except RecursionError:  # the decoder recurses per nesting level; a deep `[[[[...` exhausts the stack
        raise APIError(400, "We could not parse the JSON body of your request (nested too deeply).",
                       code="invalid_json") from None
    # In an ASCII body only a \uD800-\uDFFF escape can make a surrogate, so most bodies skip the walk.
    if not raw.isascii() or _SURROGATE_ESCAPE.search(raw):
        _check_strings(obj)
    return obj


def _check_strings(obj: Any) -> None:
    """Refuse strings with an unpaired UTF-16 surrogate (`"\\ud800"` is valid JSON but not Unicode text).

    They could not be tokenized, stored or even echoed back in an error (UTF-8 cannot encode them), so they are
    refused here once rather than failing as 500s wherever they travel. Walked without recursion (deep bodies).
    """
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(400, "We could not parse the JSON body of your request (a string holds an unpaired "
                                    "UTF-16 surrogate escape such as \\ud800, which is not valid Unicode text).",
                               code="invalid_json") from None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(400, f"Unsupported content part type {part.get('type')!r}: this model reads text only.",
                           param="messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


# ---- keys and limits -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    key_id: int | None
    tenant: str
    groups: tuple[str, ...]
    level: int
    models: tuple[str, ...]
    rate_limit: int | None

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


ANONYMOUS = Caller(None, "", (), 0, ("*",), None)


class RateLimiter:
    """Token bucket per key: `limit` requests per minute, bursts up to `limit`."""

    def __init__(self) -> None:
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: Any, limit: int) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(limit), now))
            tokens = min(float(limit), tokens + (now - last) * limit / 60.0)
            ok = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
            return ok


@dataclass
class Target:
    """What a request's `model` resolved to."""

    name: str  # as the client asked (a routing alias's target once routed)
    adapter: str | None  # engine adapter name (registry id or folder-derived), None = base
    alias: AliasConfig | None = None
    shadow: ShadowTarget | None = None  # the followed deployment's shadow, which gets a copy of the request
    routed_from: str | None = None  # the routing alias the client asked for


class RequestLogger:
    """Writes request log rows on a background thread so no request waits for the database."""

    def __init__(self, registry: Any, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.errors = 0
        self.last_error: str | None = None
        self.thread = threading.Thread(target=self._run, name="llmtailor-request-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            row = self.q.get()
            try:
                if row is None:
                    return
                self.registry.log_request(**row)
            except Exception as e:  # a logging failure must not take the server down; counted, shown, warned
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self.metrics is not None:
                    self.metrics.request_log_errors.inc()
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("request log: %d row(s) not written (last: %s)", self.errors, self.last_error)
            finally:
                self.q.task_done()

    def put(self, row: dict[str, Any]) -> None:
        self.q.put(row)

    def flush(self) -> None:
        self.q.join()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=5)


class Server:
    """State shared by the routes: config, engine, registry, deployments, RAG retrievers, embedder."""

    def __init__(self, cfg: Any, engine: Engine, registry: Any, *, metrics: Metrics, embedder: Any = None):
        self.cfg = cfg
        self.serve = cfg.serve
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.registry = registry
        self.metrics = metrics
        self._embedder = embedder
        self.limiter = RateLimiter()
        self.base_name = served_base_name(cfg.model.base_model, self.serve.base_name)
        self.deployments: dict[str, Any] = {}
        self.deployments_loaded = False
        self._retrievers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.logger = RequestLogger(registry, metrics) if registry is not None and self.serve.log_requests else None
        self.schemas = {name: load_schema(_abs(a.guardrails.json_schema, cfg.base_dir))
                        for name, a in self.serve.aliases.items() if a.guardrails.json_schema}
        self.router = Router(self.serve.aliases, self.embedder)
        self.shadows = ShadowRunner(self)
        self._folders: dict[str, Path] = {}  # engine adapter name -> folder, for every adapter registered here
        self._alias_found: dict[str, tuple[str, Path]] = {}  # alias adapter spec -> (engine name, folder)
        self._token_chars: int | None = None  # longest vocabulary entry, in characters (0 = unknown)
        # RAG answers block a thread for a whole generation: on the loop's small default pool (cores + 4) a few of
        # them would hold up every other request's blocking steps (model resolution, guardrails) behind them.
        self.rag_pool = ThreadPoolExecutor(self.serve.max_queue, thread_name_prefix="llmtailor-rag")

    # ---- auth ------------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Caller:
        if not self.serve.require_api_key:
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
                                "(create one with `tailor keys create`).", code="invalid_api_key")
        if self.registry is None:
            raise APIError(503, "API keys are required but no registry is configured.", type="server_error")
        try:
            info = self.registry.find_key(secret.strip())
        except TailorError as e:
            raise _fault(503, "Key store unavailable.", e, code="registry_unavailable") from e
        if info is None:
            raise APIError(401, "Incorrect or revoked API key provided.", code="invalid_api_key")
        caller = Caller(info.id, info.tenant, info.groups, info.level, info.models, info.rate_limit)
        limit = caller.rate_limit or self.serve.rate_limit_per_minute
        if not self.limiter.allow(caller.key_id, limit):
            self.metrics.rate_limited.inc()
            raise APIError(429, f"Rate limit reached for this key: {limit} requests per minute.",
                           type="requests", code="rate_limit_exceeded")
        return caller

    def is_operator(self, caller: Caller) -> bool:
        """May this key read /metrics and /health details, which name every tenant's aliases and adapters?

        There is no admin flag on keys: the operator's keys are those of a tenant in `serve.metrics_tenants`
        (default: the tenant named like the project) whose models allow '*'. Without required keys, all is open.
        """
        if not self.serve.require_api_key:
            return True
        tenants = self.serve.metrics_tenants if self.serve.metrics_tenants is not None else [self.cfg.project]
        return caller.tenant in tenants and "*" in caller.models

    def metric_label(self, model: str) -> str:
        """`model` as a Prometheus label before it resolved: a configured name, else 'unknown' (bounded labels)."""
        known = {self.base_name, *self.serve.aliases, self.cfg.project, f"{self.cfg.project}:staging",
                 self.embedding_name()}
        return model if model in known else "unknown"

    def public_source(self, source: str) -> str:
        """A citation's source as clients see it: relative to the project folder, else the file name only.

        Sources are absolute paths on the server; they say where documents (and the operator's disk layout) live.
        Other sources (records, URLs) are kept.
        """
        if PureWindowsPath(source).drive and not Path(source).is_absolute():
            return PureWindowsPath(source).name
        path = Path(source)
        if not path.is_absolute():
            return source
        for base in (self.cfg.base_dir.absolute(), self.cfg.base_dir.resolve()):
            with contextlib.suppress(ValueError):
                return path.relative_to(base).as_posix()
        return path.name

    def check_chars(self, texts: list[str], max_tokens: int, param: str) -> None:
        """Refuse a prompt that cannot fit the context before anything tokenizes, routes, guards or retrieves it.

        No token covers more characters than the longest vocabulary entry, so C non-space characters are at least
        C / that many tokens (halved again as a margin for normalizers that drop characters, such as accent marks):
        a megabyte prompt costs a character count, not a tokenizer pass or PII analysis.
        """
        if self._token_chars is None:
            try:
                self._token_chars = max(map(len, self.tokenizer.get_vocab()), default=0)
            except Exception:  # a tokenizer without a vocabulary to read: the exact token count still applies
                self._token_chars = 0
        limit = getattr(self.engine, "max_model_len", None)
        if not self._token_chars or not limit:
            return
        least = sum(len("".join(t.split())) for t in texts) // (2 * self._token_chars)
        if least + max_tokens > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your messages are "
                                f"at least {least} tokens long, and {max_tokens} more were requested for the "
                                "completion. Please reduce the length of the messages or completion.",
                           param=param, code="context_length_exceeded")

    # ---- model resolution ------------------------------------------------------------------------
    def visible_models(self, caller: Caller) -> list[str]:
        """What this key may call: the same checks as `resolve`, so nothing listed answers 404."""
        out = [self.base_name] if caller.allows(self.base_name) else []
        for name, alias in self.serve.aliases.items():
            if caller.allows(name) and (not alias.tenants or caller.tenant in alias.tenants):
                out.append(name)
        raw: list[tuple[str, str, Path | None, str | None]] = []  # (model, engine name, folder, stage)
        for stage, model in (("production", self.cfg.project), ("staging", f"{self.cfg.project}:staging")):
            dep = self.deployments.get(stage)
            if dep:
                raw.append((model, dep.adapter_id, Path(dep.adapter_path), stage))
        if self.registry is not None:
            with contextlib.suppress(TailorError):
                raw.extend((a["id"], a["id"], Path(a["path"]), None) for a in self.registry.adapters())
        with contextlib.suppress(APIError):  # restrictions unknown (registry down): list no raw names
            rules = self._restrictions()
            for model, name, folder, stage in raw:
                if caller.allows(model) and self._raw_allowed(rules, caller, name, folder, stage):
                    out.append(model)
        return list(dict.fromkeys(out))

    def resolve(self, model: str, caller: Caller, sticky: str) -> Target:
        not_found = APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                             param="model", code="model_not_found")
        if not caller.allows(model):
            raise not_found
        alias = self.serve.aliases.get(model)
        if alias is not None:
            if alias.tenants and caller.tenant not in alias.tenants:
                raise not_found
            spec = alias.adapter
        elif model == self.base_name:
            spec = None
        elif model == self.cfg.project:
            spec = "@production"
        elif model == f"{self.cfg.project}:staging":
            spec = "@staging"
        else:
            spec = model
        target = Target(model, self._adapter(spec, model, sticky, caller, from_alias=alias is not None), alias)
        target.shadow = self._shadow(spec)
        return target

    def _shadow(self, spec: str | None) -> ShadowTarget | None:
        """The shadow of the deployment a stage-following spec (`@production`) resolved through, if any."""
        if spec is None or not spec.startswith("@"):
            return None
        dep = self.deployments.get(spec[1:])
        if dep is None or not getattr(dep, "shadow_adapter_id", None) or not dep.shadow_path:
            return None
        return ShadowTarget(dep.shadow_adapter_id, dep.shadow_path, spec[1:])

    def resolve_request(self, model: str, caller: Caller, sticky: str, features: Callable[[], RouteInput]) -> Target:
        """`resolve`, following routing aliases first.

        The key must be allowed the routing alias (its model list and the alias's tenants); the chosen target is
        then used on the key's behalf, so keys need not list every target. Tenant, groups and clearance stay the
        key's, and a target alias's own `tenants` still applies (config validation keeps the two consistent).
        """
        if not self.router.routes(model):
            return self.resolve(model, caller, sticky)
        alias = self.serve.aliases[model]
        if not caller.allows(model) or (alias.tenants and caller.tenant not in alias.tenants):
            raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        try:
            hops = self.router.follow(model, features())
        except TailorError as e:
            raise _fault(500, f"Routing '{model}' failed.", e) from e
        for name, to, reason in hops:
            self.metrics.routed(name, to, reason)
        target = self.resolve(hops[-1][1], replace(caller, models=("*",)), sticky)
        target.routed_from = model
        return target

    def _adapter(self, spec: str | None, model: str, sticky: str, caller: Caller, *, from_alias: bool) -> str | None:
        """The engine adapter a spec names, registered on first use (None = the base).

        An alias's spec is the operator's and may be any folder. Any other spec is the client's `model`: it must
        be a plain name (a registry id or a run id, never a path), a run folder must lie inside runs_dir once
        symlinks are resolved, and the adapter must not be one that tenant-restricted aliases keep from this
        caller's tenant (see `_restrictions`).
        """
        if spec is None:
            return None
        not_found = APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                             param="model", code="model_not_found")
        if spec.startswith("@"):
            stage = spec[1:]
            if not self.deployments_loaded:
                self.refresh_deployments()
            dep = self.deployments.get(stage)
            if dep is None:
                raise APIError(503, f"'{model}' follows the {stage} deployment, but nothing is deployed to {stage}.",
                               type="server_error", code="no_deployment")
            aid, path = dep.adapter_id, dep.adapter_path
            if dep.canary_adapter_id and dep.canary_percent > 0:
                bucket = int(hashlib.sha256(f"{sticky}|dep-{dep.id}".encode()).hexdigest()[:8], 16) % 10000
                if bucket < dep.canary_percent * 100:
                    aid, path = dep.canary_adapter_id, dep.canary_path
            if not from_alias and not self._raw_allowed(self._restrictions(), caller, aid, Path(path), stage):
                raise not_found
            return self._register(aid, Path(path))
        if not from_alias and not _plain_name(spec):
            raise not_found
        found = self._find(spec, from_alias=from_alias)
        if found is None:
            if not self.engine.has_adapter(spec):  # one its builder added to the engine is served by its name
                raise not_found
            name, folder = spec, None
        else:
            name, folder = found
        if not from_alias and not self._raw_allowed(self._restrictions(), caller, name, folder, None):
            raise not_found
        return self._register(name, folder) if folder is not None else name

    def _find(self, spec: str, *, from_alias: bool) -> tuple[str, Path] | None:
        """(engine name, folder) of an adapter spec that is not a stage, without loading it; None if unknown."""
        if spec in self._folders:
            return spec, self._folders[spec]
        if self.registry is not None:
            try:
                found = self.registry.adapter(spec)
            except TailorError as e:
                raise _fault(503, "Registry unavailable.", e) from e
            if found is not None:
                return found["id"], Path(found["path"])
        run_adapter = self.cfg.runs_dir / spec / "adapter"
        if from_alias:
            if (run_adapter / "adapter_config.json").exists():
                return f"ad-{spec}", run_adapter
            folder = _abs(Path(spec), self.cfg.base_dir)
            if folder is not None and (folder / "adapter_config.json").exists():
                return str(folder), folder
            return None
        real = run_adapter.resolve()
        if real.is_relative_to(Path(self.cfg.runs_dir).resolve()) and (real / "adapter_config.json").exists():
            return f"ad-{spec}", run_adapter
        return None

    def _restrictions(self) -> dict[Any, set[str]]:
        """Tenants that may reach an adapter by a raw name, for adapters that tenant-restricted aliases serve.

        Keys are engine names, real folders and '@stage' (an alias following a stage restricts the project name
        and, while deployed there, the stage's adapters). Several restricted aliases on one adapter add up their
        tenants; an unrestricted alias on it does not lift the restriction on raw names.
        """
        rules: dict[Any, set[str]] = {}
        for alias in self.serve.aliases.values():
            if not alias.tenants or alias.adapter is None:
                continue
            found: list[tuple[str | None, str | Path | None]] = []
            if alias.adapter.startswith("@"):
                stage = alias.adapter[1:]
                rules.setdefault(f"@{stage}", set()).update(alias.tenants)
                if not self.deployments_loaded:
                    try:
                        self.refresh_deployments()
                    except Exception as e:  # fail closed: without the deployments, the stage's adapters are unknown
                        raise _fault(503, "Registry unavailable.", e) from e
                dep = self.deployments.get(stage)
                if dep is not None:
                    found = [(dep.adapter_id, dep.adapter_path), (dep.canary_adapter_id, dep.canary_path)]
            else:
                if alias.adapter not in self._alias_found:
                    hit = self._find(alias.adapter, from_alias=True)
                    if hit is not None:  # unknown ones are looked up again next time (registered later)
                        self._alias_found[alias.adapter] = hit
                if alias.adapter in self._alias_found:
                    found = [self._alias_found[alias.adapter]]
            for name, folder in found:
                for key in (name, _real(folder)):
                    if key is not None:
                        rules.setdefault(key, set()).update(alias.tenants)
        return rules

    @staticmethod
    def _raw_allowed(rules: dict[Any, set[str]], caller: Caller, name: str, folder: Path | None,
                     stage: str | None) -> bool:
        keys = (name, _real(folder), f"@{stage}" if stage else None)
        return all(caller.tenant in rules[k] for k in keys if k is not None and k in rules)

    def _register(self, name: str, path: Path) -> str:
        if not self.engine.has_adapter(name):
            if (path / "config.json").exists() and not (path / "adapter_config.json").exists():
                raise APIError(400, f"'{name}' is a fully fine-tuned model, which cannot share the base; serve it "
                                    "on its own with model.base_model set to its folder.", param="model")
            try:
                self.engine.add_adapter(name, path)
            except UnsupportedAdapter as e:  # e.g. DoRA on llama.cpp: the request asks what this engine cannot do
                raise APIError(400, str(e), param="model", code="unsupported_adapter") from e
            except TailorError as e:
                raise _fault(500, f"Loading adapter '{name}' failed.", e) from e
        self._folders.setdefault(name, path)
        return name

    def refresh_deployments(self) -> None:
        if self.registry is None:
            self.deployments_loaded = True
            return
        fresh = {stage: self.registry.current(stage) for stage in ("staging", "production")}
        self.deployments = fresh
        self.deployments_loaded = True

    # ---- RAG -------------------------------------------------------------------------------------
    def retriever(self, alias_name: str, alias: AliasConfig) -> Any:
        with self._lock:
            if alias_name not in self._retrievers:
                from llmtailor.rag.config import RagConfig
                from llmtailor.rag.search import Retriever

                rag = self.cfg.rag or RagConfig()
                assert alias.index is not None
                self._retrievers[alias_name] = Retriever.open(_abs(alias.index, self.cfg.base_dir), rag,
                                                              base_dir=self.cfg.base_dir)
            return self._retrievers[alias_name]

    def rag_answer(self, target: Target, question: str, caller: Caller, max_tokens: int) -> Any:
        from llmtailor.rag.acl import Caller as RagCaller
        from llmtailor.rag.answer import RagAssistant
        from llmtailor.rag.config import RagConfig

        assert target.alias is not None
        engine, adapter, label = self.engine, target.adapter, target.name
        answer_cfg = (self.cfg.rag or RagConfig()).answer.model_copy(update={"max_new_tokens": max_tokens})

        class ServedAssistant(RagAssistant):
            """RagAssistant generating through the shared engine (batched with everything else)."""

            def _generate(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
                ids = prompt_ids(engine.tokenizer, messages)
                req = GenRequest(ids, max_new_tokens, adapter=adapter, label=label, owner=_owner(caller, ""),
                                 prefix_len=chat_prefix_len(engine.tokenizer, messages, ids))
                text, _ = engine.complete(req)
                return text.strip()

        screened = _ScreenedRetriever(self.retriever(target.name, target.alias), target.alias.guardrails)
        assistant = ServedAssistant(screened, answer_cfg, model=engine.model, tokenizer=engine.tokenizer)
        who = RagCaller(tenant=caller.tenant, groups=caller.groups, level=caller.level)
        answer = assistant.ask(question, caller=who, top_k=target.alias.top_k)
        answer.dropped_passages = screened.dropped
        return answer

    # ---- embeddings ------------------------------------------------------------------------------
    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                from llmtailor.rag.embed import load_embedder

                emb_cfg = self.cfg.rag.embedding if self.cfg.rag is not None else None
                self._embedder = load_embedder(emb_cfg, self.cfg.base_dir)
            return self._embedder

    def embedding_name(self) -> str:
        if self._embedder is not None:
            return self._embedder.name
        from llmtailor.rag.config import PACKAGED_EMBEDDER

        return self.cfg.rag.embedding.model if self.cfg.rag is not None else PACKAGED_EMBEDDER

    def close(self) -> None:
        self.rag_pool.shutdown(wait=False, cancel_futures=True)
        if self.logger is not None:
            self.logger.close()
        for r in self._retrievers.values():
            with contextlib.suppress(Exception):
                r.close()


_SENTINEL = "\x00llmtailor-prefix\x00"
# Temperatures below this decode greedily: at 1e-4 a logit gap of 0.01 is already a factor e^100, so sampling is
# argmax anyway, and far smaller ones (5e-324 is valid JSON) overflow the scaled logits to inf.
GREEDY_BELOW = 1e-4


def chat_prefix_len(tokenizer: Any, messages: list[dict[str, str]], ids: list[int]) -> int:
    """How many leading prompt ids are shared by every request with the same system messages.

    That is the rendered text before the first user message's content (system prompt, template header, a
    default system prompt the template adds); the prefix cache keys on exactly these ids.
    """
    lead = []
    for m in messages:
        if m["role"] == "user":
            break
        lead.append(m)
    try:
        text = render_prompt(tokenizer, [*lead, {"role": "user", "content": _SENTINEL}])
    except Exception:  # a template that rejects this shape: no prefix caching for it
        return 0
    at = text.find(_SENTINEL)
    if at <= 0:
        return 0
    head = tokenizer(text[:at], add_special_tokens=False)["input_ids"]
    # The last token may merge with the user's text: keep only what the real prompt shares.
    n = len(head)
    while n and ids[:n] != head[:n]:
        n -= 1
    return n


def _plain_name(name: str) -> bool:
    """A run or adapter id as a client may send it: one path component, so it cannot name another folder."""
    return (bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")
            and not PureWindowsPath(name).drive)


def _real(path: str | Path | None) -> Path | None:
    """A folder with symlinks and `..` resolved, so two spellings of one adapter compare equal."""
    return Path(path).resolve() if path else None


def _abs(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else base / path


# ---- the app -------------------------------------------------------------------------------------
def create_app(cfg: Any, *, engine: Engine | None = None, registry: Any = None, embedder: Any = None,
               metrics: Metrics | None = None, engine_name: str | None = None) -> FastAPI:
    """The FastAPI app. Without `engine`, the configured engine is built on the base model (the CLI path)."""
    metrics = metrics or Metrics()
    if engine is None:
        from llmtailor.serve.engines import build_engine, choose_engine

        engine = build_engine(cfg, choose_engine(cfg.model, engine_name or cfg.serve.engine), stats=metrics)
    else:
        engine.stats = metrics
    server = Server(cfg, engine, registry, metrics=metrics, embedder=embedder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        poll = asyncio.create_task(_poll_deployments(server))
        try:
            yield
        finally:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            await server.shadows.close()
            engine.stop()
            server.close()

    app = FastAPI(title="llmtailor", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    def request_id(request: Request) -> str:
        """The completion id once there is one, so the client's id, the log line and the request log match."""
        return getattr(request.state, "request_id", None) or "req_" + secrets.token_hex(12)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.observe_request(getattr(request.state, "model", ""), request.url.path, exc.status)
        if exc.detail is None:
            return exc.response()
        rid = request_id(request)
        return _logged(exc, rid, f"{request.method} {request.url.path}").response(rid)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return APIError(404, f"Unknown route {request.method} {request.url.path}.", code="unknown_url").response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc: Exception) -> JSONResponse:
        return APIError(405, f"Method {request.method} not allowed on {request.url.path}.").response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The exception text stays in the log: it can name files, SQL, keys' hashes or library internals.
        rid = request_id(request)
        log.error("%s %s failed (request id %s)", request.method, request.url.path, rid, exc_info=exc)
        metrics.observe_request(getattr(request.state, "model", ""), request.url.path, 500)
        return APIError(500, f"The server had an error while processing your request (request id {rid}; details "
                             "in the server log).", type="server_error", code="internal_error").response(rid)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness for anyone (probes carry no key); loaded adapters and deployments for operator keys only."""
        out: dict[str, Any] = {"status": "ok"}
        if server.serve.require_api_key and not request.headers.get("authorization"):
            return out
        try:
            caller = server.authenticate(request)
        except APIError:  # a wrong key, a rate limit or a registry outage: the server itself is still up
            return out
        if server.is_operator(caller):
            out.update({"model": server.base_name, "loaded_adapters": engine.loaded_adapters,
                        "deployments": {k: (v.adapter_id if v else None) for k, v in server.deployments.items()}})
        return out

    @app.get("/metrics")
    async def metrics_route(request: Request) -> Response:
        """Every tenant's alias and adapter names are in here: operator keys only (`Server.is_operator`)."""
        caller = server.authenticate(request)
        if not server.is_operator(caller):
            raise APIError(403, "This key may not read /metrics: it needs the operator's tenant (serve.metrics_tenants"
                                ") and models '*'.", type="invalid_request_error", code="permission_denied")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        caller = server.authenticate(request)
        names = await asyncio.to_thread(server.visible_models, caller)
        emb = server.embedding_name()
        if caller.allows(emb):
            names.append(emb)
        now = int(time.time())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "llmtailor"}
                                           for n in names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate_route(server, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate_route(server, request, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        t0 = time.perf_counter()
        caller = server.authenticate(request)
        body = _parse(EmbeddingRequest, await _body(request, server.serve.max_request_bytes))
        request.state.model = server.metric_label(body.model)
        name = server.embedding_name()
        if body.model != name or not caller.allows(body.model):
            raise APIError(404, f"The model '{body.model}' does not exist or you do not have access to it "
                                f"(the embedding model here is '{name}').", param="model", code="model_not_found")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise APIError(400, "'input' must be a non-empty string or a list of non-empty strings.", param="input")
        if len(texts) > 2048:
            raise APIError(400, "At most 2048 inputs per request.", param="input")
        emb = await asyncio.to_thread(server.embedder)
        vectors = await asyncio.to_thread(emb.embed, texts)
        counts = emb.count_tokens(texts)
        data = []
        for i, v in enumerate(vectors):
            vec = v.astype("<f4")
            value: Any = base64.b64encode(vec.tobytes()).decode() if body.encoding_format == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        metrics.observe_request(body.model, "/v1/embeddings", 200, time.perf_counter() - t0)
        return JSONResponse({"object": "list", "data": data, "model": name,
                             "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}})

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        caller = server.authenticate(request)
        body = _parse(FeedbackRequest, await _body(request, server.serve.max_request_bytes))
        if server.registry is None or server.logger is None:
            raise APIError(503, "Feedback needs the registry and request logging (serve.log_requests).",
                           type="server_error")
        await asyncio.to_thread(server.logger.flush)
        rows = await asyncio.to_thread(_request_row, server.registry, body.id)
        if rows is None or (server.serve.require_api_key and rows.get("key_id") != caller.key_id):
            raise APIError(404, f"No completion '{body.id}' was served to this key.", param="id")
        fid = await asyncio.to_thread(server.registry.add_feedback, body.id, body.rating, body.comment, caller.key_id)
        return {"object": "feedback", "id": f"fb-{fid}", "request_id": body.id, "rating": body.rating}

    return app


def _request_row(registry: Any, request_id: str) -> dict[str, Any] | None:
    with registry.session() as s:
        from llmtailor.registry.db import RequestLog

        row = s.get(RequestLog, request_id)
        return {"key_id": row.key_id} if row else None


async def _poll_deployments(server: Server) -> None:
    """Follow promote / canary / rollback without a restart: re-read the deployment table periodically.

    On a thread of its own: the loop's default pool runs requests' blocking work (RAG answers, guardrails), and
    a poll queued behind a burst of them would let a rollback wait far longer than `serve.deployment_poll_s`.
    The period counts from each read's start, so a slow registry does not stretch it either.
    """
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="llmtailor-deployments")
    try:
        while True:
            started = time.monotonic()
            with contextlib.suppress(Exception):  # a registry hiccup keeps the last known deployments
                await loop.run_in_executor(pool, server.refresh_deployments)
            await asyncio.sleep(max(0.0, server.serve.deployment_poll_s - (time.monotonic() - started)))
    finally:
        pool.shutdown(wait=False)


# ---- generation routes ---------------------------------------------------------------------------
async def _generate_route(server: Server, request: Request, *, chat: bool) -> Response:
    t0 = time.perf_counter()
    caller = server.authenticate(request)
    raw = await _body(request, server.serve.max_request_bytes)
    body = _parse(ChatRequest if chat else CompletionRequest, raw)
    request.state.model = server.metric_label(body.model)  # the name itself once it resolved
    serve = server.serve
    max_tokens = body.max_completion_tokens if chat and body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:
        max_tokens = serve.max_tokens_default
    param = "max_completion_tokens" if chat and body.max_completion_tokens is not None else "max_tokens"
    if max_tokens < 1 or max_tokens > serve.max_tokens_limit:
        raise APIError(400, f"Invalid '{param}': {max_tokens}. It must be between 1 and {serve.max_tokens_limit}.",
                       param=param, code="invalid_value")
    if body.n != 1:
        raise APIError(400, "Only n=1 is supported.", param="n", code="invalid_value")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise APIError(400, "At most 4 stop sequences.", param="stop")
    fmt = None
    if chat and body.response_format is not None:
        try:
            fmt = parse_response_format(body.response_format)
        except ResponseFormatError as e:
            raise APIError(400, str(e), param="response_format", code="invalid_value") from None
        if fmt is not None and stops:
            raise APIError(400, "'stop' cannot be combined with a JSON response_format (it would cut the document).",
                           param="stop")
    if chat:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
                    for m in body.messages]
    else:
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise APIError(400, "Send one prompt per request (batch by sending requests concurrently).",
                           param="prompt")
        texts = [body.prompt if isinstance(body.prompt, str) else body.prompt[0]]
    where = "messages" if chat else "prompt"
    # A prompt that cannot fit is refused before routing, guardrails or retrieval read it (cheap character bound).
    server.check_chars([m["content"] for m in messages] if chat else texts, max_tokens, where)
    host = request.client.host if request.client else ""  # None on a unix socket
    sticky = str(caller.key_id) if caller.key_id is not None else (body.user or host or "")
    target = await asyncio.to_thread(server.resolve_request, body.model, caller, sticky,
                                     lambda: _route_input(server, body, chat, fmt is not None))
    request.state.model = body.model
    alias = target.alias
    guard = alias.guardrails if alias is not None else GuardrailConfig()
    system_prompt = alias.system_prompt if alias is not None else None
    rag = alias is not None and alias.index is not None
    temperature = body.temperature if body.temperature is not None else serve.default_temperature
    if temperature < GREEDY_BELOW:  # logits / 1e-320 overflow to inf and the sampler fails on NaN
        temperature = 0.0
    top_p = body.top_p if body.top_p is not None else 1.0
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    request.state.request_id = rid
    hits: list[dict[str, Any]] = []

    # Input: the client's texts, guarded; the alias system prompt is the operator's and passes as is.
    if chat:
        if any(m["role"] == "tool" for m in messages):
            raise APIError(400, "Tool messages are not supported by this server.", param="messages")
        user_idx = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not user_idx:
            raise APIError(400, "'messages' must contain at least one user message.", param="messages")
        texts = [messages[i]["content"] for i in user_idx]
    if rag:
        if not chat:
            raise APIError(400, f"'{body.model}' answers from documents: use /v1/chat/completions.", param="model")
        if fmt is not None:
            raise APIError(400, f"'{body.model}' answers from documents with citations; response_format is not "
                                "supported for it.", param="response_format")
    # The exact token count, still before the guardrails (PII analysis is the costly part of a request).
    ids = None if rag else _prompt_ids(server, _with_system(system_prompt, messages) if chat else None, texts,
                                       max_tokens, where)
    # Every turn the client sent is guarded: its system, developer and assistant turns are its text too.
    guarded = [m["content"] for m in messages] if chat else texts
    verdict = await asyncio.to_thread(check_input, guarded, guard, server.cfg.data.pii) if _any_input(guard) else None
    if verdict is not None:
        hits.extend(verdict.hits)
        for h in verdict.hits:
            server.metrics.hit(body.model, h["check"], h["action"])
        if chat:
            for m, t in zip(messages, verdict.texts, strict=True):
                m["content"] = t
            texts = [messages[i]["content"] for i in user_idx]
        else:
            texts = verdict.texts
        if verdict.blocked:  # logged with the personal data already redacted
            _log(server, rid, caller, target, 400, t0, 0, 0, hits, texts, None)
            raise APIError(400, f"Request blocked by guardrails: {verdict.blocked}.", code="content_policy_violation",
                           param=where)
        if not rag and list(verdict.texts) != guarded:  # redacted: count again
            ids = _prompt_ids(server, _with_system(system_prompt, messages) if chat else None, texts, max_tokens,
                              where)
    if chat:
        messages = _with_system(system_prompt, messages)

    if rag:
        question = [m for m in messages if m["role"] == "user"][-1]["content"]
        if not question.strip():  # retrieval has nothing to search for
            raise APIError(400, f"'{body.model}' answers the last user message from documents, and it is empty.",
                           param="messages")
        try:
            answer = await asyncio.get_running_loop().run_in_executor(server.rag_pool, server.rag_answer, target,
                                                                      question, caller, max_tokens)
        except ContextLengthError as e:
            raise APIError(400, str(e), param="messages", code="context_length_exceeded") from None
        except QueueFull as e:
            raise _busy(e) from None
        except TailorError as e:
            raise _fault(500, "Retrieval failed.", e) from e
        dropped = getattr(answer, "dropped_passages", 0)
        if dropped:
            hits.append({"check": "passage_injection", "action": "drop", "found": dropped})
            server.metrics.hit(body.model, "passage_injection", "drop", dropped)
        # Sources are paths on the server: clients get them relative to the project, or the file name.
        extra = {key: [{**c.__dict__, "source": server.public_source(c.source)} for c in cites]
                 for key, cites in (("citations", answer.citations), ("passages", answer.passages))}
        extra["known"] = answer.known
        text = answer.answer
        usage = (len(prompt_ids(server.tokenizer, messages)), len(server.tokenizer(text)["input_ids"]))
        if _any_output(guard):  # retrieved documents can carry personal data into the answer
            text = await _guard_answer(server, body, guard, target, rid, caller, t0, usage, hits, texts, text)
        _shadow_job(server, rid, caller, target, texts, guard, max_tokens, question=question)()
        return await _finish_whole(server, request, body, rid, chat, caller, target, text, "stop", usage, hits, t0,
                                   texts, extra)

    assert ids is not None
    constraint = None
    if fmt is not None:
        try:
            constraint = await asyncio.to_thread(lambda: server.engine.structured().constraint(fmt, max_tokens))
        except ResponseFormatError as e:
            raise APIError(400, str(e), param="response_format", code="invalid_value") from None
        except TailorError as e:
            raise APIError(501, str(e), type="server_error", param="response_format") from None
    req = GenRequest(ids, max_tokens, adapter=target.adapter, temperature=temperature, top_p=top_p, stop=stops,
                     seed=body.seed, label=body.model, constraint=constraint, owner=_owner(caller, sticky),
                     prefix_len=chat_prefix_len(server.tokenizer, messages, ids) if chat else 0)
    output_checks = _any_output(guard)
    shadow = _shadow_job(server, rid, caller, target, texts, guard, max_tokens, template=req, fmt=fmt)
    try:
        events = server.engine.stream(req)  # submitted before any answer starts: a full queue is a clean 503
    except QueueFull as e:
        raise _busy(e) from None
    if body.stream and not output_checks:
        return StreamingResponse(_then(_stream(server, body, rid, chat, caller, target, req, events, hits, t0, texts),
                                       shadow), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    # Whole answer (also for streams whose output must be checked before anyone sees it).
    text, final = await _collect(request, req, events)
    if final.finish_reason == "cancelled":  # the client left: nobody reads an answer, decoding stopped
        _log(server, rid, caller, target, 499, t0, final.prompt_tokens, final.completion_tokens, hits, texts, text)
        raise APIError(499, "Client closed the request.", code="client_closed_request")
    if fmt is not None and validate(text, fmt) is not None and final.finish_reason == "stop":
        # Cannot happen with the grammar applied (kept as a loud check rather than a silent bad answer).
        raise _fault(500, "Structured output failed.", str(validate(text, fmt)))
    if output_checks:
        text = await _guard_answer(server, body, guard, target, rid, caller, t0,
                                   (final.prompt_tokens, final.completion_tokens), hits, texts, text)
    shadow()
    return await _finish_whole(server, request, body, rid, chat, caller, target, text, final.finish_reason or "stop",
                               (final.prompt_tokens, final.completion_tokens), hits, t0, texts, {})


def _owner(caller: Caller, fallback: str) -> str:
    """Whose share of the engine a request uses (fair queueing): its API key, else the client's user/address."""
    return f"key-{caller.key_id}" if caller.key_id is not None else f"anon-{fallback}"


async def _batches(events: Any) -> AsyncIterator[list[Event]]:
    """An engine's events in batches: EventStream hands them over batched; any other async iterator one by one."""
    if isinstance(events, EventStream):
        async for batch in events.batches():
            yield batch
    else:
        async for ev in events:
            yield [ev]


async def _collect(request: Request, req: GenRequest, events: Any) -> tuple[str, Event]:
    """The whole answer and its final event. A client that disconnects meanwhile aborts the request, so the
    engine stops decoding an answer nobody will read (finish_reason "cancelled")."""
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if isinstance(events, EventStream):
            events.abort()
        else:
            req.cancel()

    watcher = asyncio.create_task(watch())
    parts: list[str] = []
    try:
        async for batch in _batches(events):
            for ev in batch:
                if ev.kind == "delta":
                    parts.append(ev.text)
                elif ev.kind == "error":
                    raise _fault(500, "Generation failed.", ev.error or "unknown engine error")
                else:
                    return "".join(parts), ev
    finally:
        watcher.cancel()
    raise _fault(500, "Generation failed.", "the engine ended the request without a final event")


def _with_system(prompt: str | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The alias's system prompt first, always; a client's leading system message is merged after it.

    The operator's text opens the one leading system message and the client's own (system or developer) text
    follows it after a blank line: the client may add instructions but never replace or precede the operator's,
    and one leading system message suits every chat template (some accept no second one). System messages later in
    the conversation stay where the client put them.
    """
    if not prompt:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{prompt}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _prompt_ids(server: Server, messages: list[dict[str, str]] | None, texts: list[str], max_tokens: int,
                where: str) -> list[int]:
    """Token ids of a chat (`messages`) or a raw prompt (`texts[0]`), refused if empty or too long for the model."""
    if messages is not None:
        ids = prompt_ids(server.tokenizer, messages)
    else:
        ids = server.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    if not ids:
        raise APIError(400, "The prompt is empty.", param="prompt")
    try:
        server.engine.check_length(len(ids), max_tokens)
    except ContextLengthError as e:
        raise APIError(400, str(e), param=where, code="context_length_exceeded") from None
    return ids


def _any_input(g: GuardrailConfig) -> bool:
    return g.injection != "off" or bool(g.deny_topics) or g.input_pii != "off"


def _any_output(g: GuardrailConfig) -> bool:
    return output_checks_enabled(g)


class _ScreenedRetriever:
    """A retriever whose passages carrying instructions for the model (indirect prompt injection: a document
    anyone could edit) are dropped before the prompt is built; `dropped` counts them for the guardrail log."""

    def __init__(self, inner: Any, guard: GuardrailConfig):
        self.inner, self.guard, self.dropped = inner, guard, 0

    def search(self, *args: Any, **kwargs: Any) -> Any:
        result = self.inner.search(*args, **kwargs)
        bad = set(check_passages([h.chunk.text for h in result.hits], self.guard))
        if bad:
            self.dropped += len(bad)
            result.hits = [h for i, h in enumerate(result.hits) if i not in bad]
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _guard_answer(server: Server, body: Any, guard: GuardrailConfig, target: Target, rid: str, caller: Caller,
                        t0: float, usage: tuple[int, int], hits: list[dict[str, Any]], texts: list[str],
                        text: str) -> str:
    """Output checks on a finished answer: the text to send (redacted if asked), or a 400 when it is withheld."""
    ov = await asyncio.to_thread(check_output, text, guard, server.cfg.data.pii, server.schemas.get(target.name))
    hits.extend(ov.hits)
    for h in ov.hits:
        server.metrics.hit(body.model, h["check"], h["action"])
    if ov.blocked:  # logged with the personal data already redacted
        _log(server, rid, caller, target, 400, t0, usage[0], usage[1], hits, texts, ov.texts[0])
        raise APIError(400, f"Answer withheld by guardrails: {ov.blocked}.", code="content_policy_violation")
    return ov.texts[0]


def _route_input(server: Server, body: Any, chat: bool, wants_json: bool) -> RouteInput:
    """What routing rules read: the last user text (as sent), JSON or not, and the prompt's length on demand."""
    tok = server.tokenizer
    if not chat:
        prompt = body.prompt if isinstance(body.prompt, str) else (body.prompt[0] if body.prompt else "")
        return RouteInput(prompt, wants_json, lambda: len(tok(prompt, add_special_tokens=False)["input_ids"]))
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
                for m in body.messages]
    users = [m["content"] for m in messages if m["role"] == "user"]

    def count() -> int:
        try:
            return len(prompt_ids(tok, messages))
        except Exception:  # a shape the template rejects is refused later with a clear error; count the texts
            return sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)

    return RouteInput(users[-1] if users else "", wants_json, count)


def _shadow_job(server: Server, rid: str, caller: Caller, target: Target, texts: list[str], guard: GuardrailConfig,
                max_tokens: int, **how: Any) -> Callable[[], None]:
    """Starts the shadow copy of a request once its answer is complete (a no-op without a shadow)."""
    def start() -> None:
        if target.shadow is not None:
            server.shadows.start(ShadowJob(rid, caller, target, texts, guard, max_tokens, **how))

    return start


async def _then(chunks: AsyncIterator[str], done: Callable[[], None]) -> AsyncIterator[str]:
    """Pass a stream through, then call `done` if it ran to the end (not when the client left)."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]  # the inner stream's cleanup runs as without us
    done()


async def _finish_whole(server: Server, request: Request, body: Any, rid: str, chat: bool, caller: Caller,
                        target: Target, text: str, finish: str, usage: tuple[int, int], hits: list[dict[str, Any]],
                        t0: float, texts: list[str], extra: dict[str, Any]) -> Response:
    created = int(time.time())
    usage_d = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
    _log(server, rid, caller, target, 200, t0, usage[0], usage[1], hits, texts, text)
    server.metrics.observe_request(body.model, request.url.path, 200, time.perf_counter() - t0)
    if hits:
        extra = {**extra, "guardrails": hits}
    if target.routed_from:
        extra = {**extra, "routed_to": target.name}
    if body.stream:  # a stream whose answer had to be complete first (RAG, output checks): one content chunk
        async def one() -> AsyncIterator[str]:
            if chat:
                yield _sse(_chunk(rid, created, body.model, {"role": "assistant", "content": ""}, None))
                yield _sse(_chunk(rid, created, body.model, {"content": text}, None))
                yield _sse({**_chunk(rid, created, body.model, {}, finish), **extra})
            else:
                yield _sse(_text_chunk(rid, created, body.model, text, None))
                yield _sse({**_text_chunk(rid, created, body.model, "", finish), **extra})
            if (body.stream_options or {}).get("include_usage"):
                yield _sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": created, "model": body.model, "choices": [], "usage": usage_d})
            yield "data: [DONE]\n\n"

        return StreamingResponse(one(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    if chat:
        out = {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                            "logprobs": None}],
               "usage": usage_d}
    else:
        out = {"id": rid, "object": "text_completion", "created": created, "model": body.model,
               "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}], "usage": usage_d}
    return JSONResponse({**out, **extra})


def _chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def _text_chunk(rid: str, created: int, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def _sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


class _Frames:
    """SSE frames of one streamed answer. Everything but the text is the same in every content chunk, so it is
    serialised once and a chunk costs one `json.dumps` of its text; frames are bytes, which Starlette sends as is."""

    _MARK = json.dumps("\x00")  # a control character: always escaped, so it cannot occur in the template otherwise

    def __init__(self, rid: str, created: int, model: str, chat: bool):
        tmpl = (_chunk(rid, created, model, {"content": "\x00"}, None) if chat
                else _text_chunk(rid, created, model, "\x00", None))
        self.head, self.tail = _sse(tmpl).split(self._MARK)

    def delta(self, text: str) -> bytes:
        return (self.head + json.dumps(text, ensure_ascii=False) + self.tail).encode()


async def _stream(server: Server, body: Any, rid: str, chat: bool, caller: Caller, target: Target, req: GenRequest,
                  events: Any, hits: list[dict[str, Any]], t0: float, texts: list[str]) -> AsyncIterator[bytes]:
    """SSE chunks as tokens arrive: every text delta already produced when the loop gets to it goes out in one
    chunk (one token per chunk while the loop keeps up). If the client disconnects, Starlette cancels this
    generator and the request is cancelled, so the engine stops decoding it at its next step."""
    created = int(time.time())
    frames = _Frames(rid, created, body.model, chat)
    parts: list[str] = []
    status = 200
    final = None
    if chat:
        yield _sse(_chunk(rid, created, body.model, {"role": "assistant", "content": ""}, None)).encode()
    try:
        async for batch in _batches(events):
            text = "".join([ev.text for ev in batch if ev.kind == "delta"])
            if text:
                parts.append(text)
                yield frames.delta(text)
            ev = batch[-1]
            if ev.kind == "error":
                status = 500
                err = _logged(_fault(500, "Generation failed.", ev.error or "unknown engine error"), rid,
                              f"streaming {body.model}")
                yield _sse(err.body()).encode()
                break
            if ev.kind == "done":
                final = ev
                last = (_chunk(rid, created, body.model, {}, ev.finish_reason) if chat
                        else _text_chunk(rid, created, body.model, "", ev.finish_reason))
                if hits:
                    last["guardrails"] = hits
                if target.routed_from:
                    last["routed_to"] = target.name
                end = _sse(last)
                if (body.stream_options or {}).get("include_usage"):
                    end += _sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                                 "created": created, "model": body.model, "choices": [],
                                 "usage": {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                                           "total_tokens": ev.prompt_tokens + ev.completion_tokens}})
                yield (end + "data: [DONE]\n\n").encode()
                return
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        status = 499  # client closed the connection
        raise
    finally:
        req.cancel()  # no-op once done; frees the row at once when the client left
        completion = final.completion_tokens if final else len(req.ids)
        _log(server, rid, caller, target, status, t0, len(req.prompt_ids), completion, hits, texts, "".join(parts))
        server.metrics.observe_request(body.model, "/v1/chat/completions" if chat else "/v1/completions", status,
                                       time.perf_counter() - t0 if status == 200 else None)


def _log(server: Server, rid: str, caller: Caller, target: Target, status: int, t0: float, prompt_tokens: int,
         completion_tokens: int, hits: list[dict[str, Any]], texts: list[str], answer: str | None) -> None:
    if server.logger is None:
        return
    keep = server.serve.log_content
    server.logger.put({
        "id": rid, "key_id": caller.key_id, "tenant": caller.tenant, "model": target.routed_from or target.name,
        "adapter_id": target.adapter, "status": status, "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "guardrails": hits,
        "prompt": "\n".join(texts) if keep else None, "answer": answer if keep else None,
        "routed_to": target.name if target.routed_from else None,
    })
