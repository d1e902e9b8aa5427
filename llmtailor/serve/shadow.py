"""Shadow answers: a copy of a user's request, answered by the stage's shadow adapter in the background.

A copy starts only after the user's answer is complete, so it never shares the user's batch, delays it or
changes it; it skips authentication and the rate limit (it is not the user's call) and is never returned.
Its answer, latency, status and adapter go to the request log with `shadow_of` = the user's request id, which
`tailor registry shadow` joins back to the user's answer. At most `serve.shadow_max_inflight` copies run at once;
more are dropped and counted (`llmtailor_shadow_requests_total{outcome="dropped"}`), so a traffic peak cannot
double the load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.serve.config import GuardrailConfig
from llmtailor.serve.engine import GenRequest
from llmtailor.serve.guardrails import check_output, output_checks_enabled

log = logging.getLogger("llmtailor.serve.shadow")


@dataclass(frozen=True)
class ShadowTarget:
    """The shadow adapter of the deployment a request followed."""

    adapter_id: str
    path: str
    stage: str


@dataclass
class ShadowJob:
    """Everything needed to answer the copy exactly as the user's request was answered, on another adapter."""

    rid: str  # the user's request id
    caller: Any  # app.Caller: tenant, groups and clearance for a RAG answer
    target: Any  # app.Target the user's request resolved to (with .shadow set)
    texts: list[str]  # the user's texts after input guardrails (what gets logged as the prompt)
    guard: GuardrailConfig
    max_tokens: int
    template: GenRequest | None = None  # plain generation: prompt ids and sampling settings to copy
    fmt: Any = None  # JSON response_format: a fresh grammar constraint is built for the copy
    question: str | None = None  # RAG alias: the question to answer again with the shadow adapter


class ShadowRunner:
    """Starts shadow jobs as background tasks on the server's event loop and logs their answers."""

    def __init__(self, server: Any):
        self.server = server
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, job: ShadowJob) -> None:
        """Fire and forget; never raises into the user's request."""
        server, shadow = self.server, job.target.shadow
        if shadow is None or server.logger is None:  # an answer nobody can read is not worth computing
            return
        if len(self.tasks) >= server.serve.shadow_max_inflight:
            server.metrics.shadow_outcome(shadow.stage, shadow.adapter_id, "dropped")
            return
        task = asyncio.get_running_loop().create_task(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait for running shadow answers (tests, graceful shutdown)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    async def close(self) -> None:
        """Cancel what is still running (the engine is about to stop)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: ShadowJob) -> None:
        shadow: ShadowTarget = job.target.shadow
        t0 = time.perf_counter()
        text, usage, hits, status = None, (0, 0), [], 200
        try:
            text, usage = await self._answer(job, shadow)
            text, hits, status = await self._check(job, text)
            outcome = "ok"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a broken shadow must never reach the user: it is logged and counted
            log.warning("shadow %s failed on %s: %s", shadow.adapter_id, job.rid, e)
            text, status, outcome = None, 500, "error"
        self.server.metrics.shadow_outcome(shadow.stage, shadow.adapter_id, outcome)
        self._log(job, shadow, status, t0, usage, hits, text)

    async def _answer(self, job: ShadowJob, shadow: ShadowTarget) -> tuple[str, tuple[int, int]]:
        server = self.server
        name = await asyncio.to_thread(server._register, shadow.adapter_id, Path(shadow.path))
        if job.question is not None:
            target = dataclasses.replace(job.target, adapter=name, shadow=None)
            answer = await asyncio.to_thread(server.rag_answer, target, job.question, job.caller, job.max_tokens)
            return answer.answer, (0, len(server.tokenizer(answer.answer)["input_ids"]))
        assert job.template is not None
        return await self._generate(job, job.template, name)

    async def _generate(self, job: ShadowJob, t: GenRequest, adapter: str) -> tuple[str, tuple[int, int]]:
        constraint = None
        if job.fmt is not None:
            engine = self.server.engine
            constraint = await asyncio.to_thread(lambda: engine.structured().constraint(job.fmt, job.max_tokens))
        req = GenRequest(list(t.prompt_ids), t.max_tokens, adapter=adapter, temperature=t.temperature, top_p=t.top_p,
                         seed=t.seed,
                         stop=list(t.stop), label=f"shadow:{adapter}", constraint=constraint, prefix_len=t.prefix_len)
        parts, final = [], None
        async for ev in self.server.engine.stream(req):
            if ev.kind == "delta":
                parts.append(ev.text)
            elif ev.kind == "error":
                raise TailorError(f"generation failed: {ev.error}")
            else:
                final = ev
        usage = (final.prompt_tokens, final.completion_tokens) if final is not None else (len(t.prompt_ids), 0)
        return "".join(parts), usage

    async def _check(self, job: ShadowJob, text: str) -> tuple[str, list[dict[str, Any]], int]:
        """The alias's output guardrails, as the user's answer had them (a blocked shadow is logged as 400)."""
        g = job.guard
        if not output_checks_enabled(g):
            return text, [], 200
        server = self.server
        ov = await asyncio.to_thread(check_output, text, g, server.cfg.data.pii, server.schemas.get(job.target.name))
        return ov.texts[0], list(ov.hits), 400 if ov.blocked else 200

    def _log(self, job: ShadowJob, shadow: ShadowTarget, status: int, t0: float, usage: tuple[int, int],
             hits: list[dict[str, Any]], text: str | None) -> None:
        server, target = self.server, job.target
        keep = server.serve.log_content
        server.logger.put({
            "id": f"{job.rid}-shadow", "key_id": job.caller.key_id, "tenant": job.caller.tenant,
            "model": target.routed_from or target.name, "adapter_id": shadow.adapter_id, "status": status,
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2), "prompt_tokens": usage[0],
            "completion_tokens": usage[1], "guardrails": hits, "prompt": "\n".join(job.texts) if keep else None,
            "answer": text if keep else None, "shadow_of": job.rid, "stage": shadow.stage,
            "routed_to": target.name if target.routed_from else None,
        })
