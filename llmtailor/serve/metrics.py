"""Prometheus metrics of one server (a registry per app, so tests can run several servers in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmtailor.serve.engine import EngineStats, GenRequest

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)


class Metrics(EngineStats):
    """Request counts by model and status, latency, time to first token, tokens/s, queue depth, batching."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmtailor_requests", "Requests by model, route and HTTP status.",
                                ["model", "route", "status"], registry=r)
        self.latency = Histogram("llmtailor_request_seconds", "End-to-end request latency.", ["model"],
                                 buckets=_LATENCY, registry=r)
        self.ttft = Histogram("llmtailor_time_to_first_token_seconds", "Time from arrival to the first token.",
                              ["model"], buckets=_TTFT, registry=r)
        self.tokens = Counter("llmtailor_generated_tokens", "Completion tokens produced.", ["model"], registry=r)
        self.tps = Histogram("llmtailor_request_tokens_per_second", "Decode rate of each finished request.",
                             ["model"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r)
        self.queue = Gauge("llmtailor_queue_depth", "Requests waiting for a batch slot.", registry=r)
        self.batch_size = Histogram("llmtailor_batch_size", "Requests decoded together.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.batch_adapters = Histogram("llmtailor_batch_adapters", "Distinct adapters in one batch.",
                                        buckets=(1, 2, 4, 8), registry=r)
        self.adapter_loads = Counter("llmtailor_adapter_loads", "Adapters loaded into the base.", ["adapter"],
                                     registry=r)
        self.cancelled = Counter("llmtailor_cancelled_requests", "Requests stopped because the client left.",
                                 ["model"], registry=r)
        self.guardrail = Counter("llmtailor_guardrail_hits", "Guardrail detections by check and action.",
                                 ["model", "check", "action"], registry=r)
        self.request_log_errors = Counter("llmtailor_request_log_errors",
                                          "Request-log rows the registry did not take (they are lost).", registry=r)
        self.prefix_lookups = Counter("llmtailor_prefix_cache_lookups", "Batches that declared a shared prompt prefix.",
                                      registry=r)
        self.prefix_hits = Counter("llmtailor_prefix_cache_hits", "Batches whose prefix KV cache was reused.",
                                   registry=r)
        self.prefix_hit_rate = Gauge("llmtailor_prefix_cache_hit_rate", "Prefix cache hits / lookups so far.",
                                     registry=r)
        self.prefix_tokens = Counter("llmtailor_prefix_cache_reused_tokens", "Prompt tokens not recomputed.",
                                     registry=r)
        self._lookups = 0
        self._hits = 0
        self.rate_limited = Counter("llmtailor_rate_limited", "Requests refused by the per-key rate limit.",
                                    registry=r)
        self.route = Counter("llmtailor_route_decisions", "Routing alias decisions: which target, and why (rule-N, "
                             "classifier, default).", ["alias", "target", "reason"], registry=r)
        self.shadow = Counter("llmtailor_shadow_requests", "Shadow copies by outcome (ok, error, dropped).",
                              ["stage", "adapter", "outcome"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # EngineStats
    def queue_depth(self, n: int) -> None:
        self.queue.set(n)

    def batch(self, size: int, adapters: int) -> None:
        self.batch_size.observe(size)
        self.batch_adapters.observe(adapters)

    def first_token(self, req: GenRequest, seconds: float) -> None:
        self.ttft.labels(req.label or "?").observe(seconds)

    def finished(self, req: GenRequest, tokens: int, seconds: float) -> None:
        label = req.label or "?"
        self.tokens.labels(label).inc(tokens)
        if req.finish_reason == "cancelled":
            self.cancelled.labels(label).inc()
        if req.first_token_at is not None and tokens > 1:
            import time

            decode = time.perf_counter() - req.first_token_at
            if decode > 0:
                self.tps.labels(label).observe((tokens - 1) / decode)

    def adapter_loaded(self, name: str, seconds: float) -> None:
        self.adapter_loads.labels(name).inc()

    def prefix_lookup(self, hit: bool, tokens: int) -> None:
        self._lookups += 1
        self.prefix_lookups.inc()
        if hit:
            self._hits += 1
            self.prefix_hits.inc()
            self.prefix_tokens.inc(tokens)
        self.prefix_hit_rate.set(self._hits / self._lookups)

    def observe_request(self, model: str, route: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(model or "?", route, str(status)).inc()
        if seconds is not None and status < 400:
            self.latency.labels(model or "?").observe(seconds)

    def hit(self, model: str, check: str, action: str, n: int = 1) -> None:
        self.guardrail.labels(model, check, action).inc(n)

    def routed(self, alias: str, target: str, reason: str) -> None:
        self.route.labels(alias, target, reason).inc()

    def shadow_outcome(self, stage: str, adapter: str, outcome: str) -> None:
        self.shadow.labels(stage, adapter, outcome).inc()


def parse(text: str) -> dict[str, Any]:
    """Samples of a /metrics page as {name{labels}: value} (for tests and `tailor monitor`)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out
