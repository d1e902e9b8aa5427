"""What passes between the server and an engine: requests, their events, the event stream to the loop.

Shared by every engine (transformers in engine.py, llama.cpp in llamacpp_engine.py): the server builds a
`GenRequest`, an engine decodes it and emits `Event`s, and an `EventStream` carries them to the event loop.
Waiting requests are admitted round-robin across their owners (`fair_order`); a full queue raises `QueueFull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llmtailor.errors import TailorError


@dataclass
class Event:
    """What the worker sends back: a text delta, the end (with finish reason), or an error."""

    kind: str  # "delta" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Exception | None = None


@dataclass
class GenRequest:
    """One completion to produce."""

    prompt_ids: list[int]
    max_tokens: int
    adapter: str | None = None  # engine adapter name (see Engine.add_adapter) or None for the base
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # sampling seed: the same seed gives the same sampled answer
    stop: list[str] = field(default_factory=list)
    label: str = ""  # model name as the client asked for it (metrics)
    owner: str = ""  # who asked (API key, else client address): queued requests are admitted round-robin by owner
    constraint: Any = None  # structured.Constraint: grammar the answer must follow
    prefix_len: int = 0  # the first prefix_len prompt ids are a shared prefix worth caching
    emit: Callable[[Event], None] = lambda ev: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    # decoding state, owned by the worker
    ids: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    finish_reason: str | None = None
    first_token_at: float | None = None

    @property
    def sampling_key(self) -> tuple:
        return ("greedy",) if self.temperature <= 0 else ("sample", round(self.temperature, 4), round(self.top_p, 4))

    def cancel(self) -> None:
        self.cancelled.set()


class QueueFull(TailorError):
    """The engine's queue holds `max_queue` requests already: the server answers 503 with Retry-After."""


def fair_order(pending: list[GenRequest]) -> list[GenRequest]:
    """Queued requests in admission order: round-robin across owners, first come first served within each.

    One key that queues a thousand requests then gets one slot in every k free ones (k owners waiting), instead of
    every slot until its backlog is gone.
    """
    by_owner: dict[str, list[GenRequest]] = {}
    for r in pending:
        by_owner.setdefault(r.owner, []).append(r)
    if len(by_owner) < 2:
        return list(pending)
    queues = list(by_owner.values())
    out: list[GenRequest] = []
    for i in range(max(map(len, queues))):
        out.extend(q[i] for q in queues if i < len(q))
    return out


class EventStream:
    """One request's events, handed from the engine thread to the event loop in batches.

    The engine thread appends under a lock and schedules a loop wake-up only when none is pending, so a consumer
    that falls behind (many streams, a busy loop) drains everything that arrived in one go instead of paying a
    wake-up and a queue hop per token; `abort` (client gone) cancels the request and ends the iteration.
    """

    def __init__(self, req: GenRequest, loop: asyncio.AbstractEventLoop):
        self.req = req
        self._loop = loop
        self._buf: list[Event] = []
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_pending = False

    def put(self, ev: Event) -> None:
        """Engine thread: queue an event, waking the loop unless a wake-up is already on its way."""
        with self._lock:
            self._buf.append(ev)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def abort(self) -> None:
        """Loop side: the client went away. Cancel decoding (the engine drops the row at its next step) and end."""
        self.req.cancel()
        with self._lock:
            self._buf.append(Event("done", finish_reason="cancelled", prompt_tokens=len(self.req.prompt_ids),
                                   completion_tokens=len(self.req.ids)))
        self._wake()

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Lists of events as they arrive, the last one ending with the final event ("done" or "error")."""
        try:
            while True:
                with self._lock:
                    got, self._buf = self._buf, []
                    if not got:
                        self._waiter = self._loop.create_future()
                if not got:
                    assert self._waiter is not None
                    await self._waiter
                    self._waiter = None
                    continue
                for i, ev in enumerate(got):
                    if ev.kind in ("done", "error"):
                        yield got[: i + 1]
                        return
                yield got
        finally:
            self.req.cancel()  # a consumer that stops early (client gone) frees the row

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for batch in self.batches():
            for ev in batch:
                yield ev


class EngineStats:
    """Hooks for metrics (the server passes Prometheus-backed ones); no-ops by default."""

    def queue_depth(self, n: int) -> None: ...
    def batch(self, size: int, adapters: int) -> None: ...
    def first_token(self, req: GenRequest, seconds: float) -> None: ...
    def finished(self, req: GenRequest, tokens: int, seconds: float) -> None: ...
    def adapter_loaded(self, name: str, seconds: float) -> None: ...
    def prefix_lookup(self, hit: bool, tokens: int) -> None: ...
