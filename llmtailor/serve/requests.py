"""What passes between the server and an engine: requests, their events, the event stream to the loop.

Shared by every engine (transformers in engine.py, llama.cpp in llamacpp_engine.py): the server builds a
`GenRequest`, an engine decodes it and emits `Event`s, and an `EventStream` carries them to the event loop.
Waiting requests are admitted round-robin across their owners (`fair_order`); a full queue raises `QueueFull`.

Every loop wake-up runs the loop thread, which takes the GIL from the engine thread (the engine needs it back after
every torch op) and writes to a socket, which wakes the client. An engine step therefore wakes each loop once for all
the requests it advanced (`deferred_wakeups`; with 8 streams the loop thread's context switches per run fell from
about 520 to 150), and a stream may hold its deltas back for `interval` seconds after the last hand-over
(`serve.stream_interval_ms`, off by default): the first token and the end always go out at once. On an otherwise idle
2-core machine neither changed throughput measurably: the HTTP path costs little next to decoding there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
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


_deferred = threading.local()  # per engine thread: the streams waiting for the end of a deferred_wakeups block


@contextlib.contextmanager
def deferred_wakeups() -> Iterator[None]:
    """Engine thread: the streams that get events inside this block (one decoding step) wake their event loop once,
    together, at its end, instead of one `call_soon_threadsafe` each as their events come. Nested blocks join the
    outer one."""
    if getattr(_deferred, "streams", None) is not None:
        yield
        return
    streams: list[EventStream] = []
    _deferred.streams = streams
    try:
        yield
    finally:
        _deferred.streams = None
        by_loop: dict[asyncio.AbstractEventLoop, list[EventStream]] = {}
        for st in streams:
            by_loop.setdefault(st._loop, []).append(st)
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
                loop.call_soon_threadsafe(_wake_all, group)


def _wake_all(streams: list[EventStream]) -> None:
    for st in streams:
        st._wake()


class EventStream:
    """One request's events, handed from the engine thread to the event loop in batches.

    The engine thread appends under a lock and schedules a loop wake-up only when none is pending, so a consumer
    that falls behind (many streams, a busy loop) drains everything that arrived in one go instead of paying a
    wake-up and a queue hop per token; `abort` (client gone) cancels the request and ends the iteration.

    `interval` (seconds, 0 = off): after a hand-over, further text deltas wait in the buffer until `interval` has
    passed; they go out with the next event after that, together (one SSE chunk with several tokens, as OpenAI's
    deltas may be). The first delta, the final event and errors are handed over at once, so time to first token
    and the end of a stream are not delayed; a held delta waits at most `interval` or one decoding step, whichever
    is longer.
    """

    def __init__(self, req: GenRequest, loop: asyncio.AbstractEventLoop, interval: float = 0.0):
        self.req = req
        self._loop = loop
        self._buf: list[Event] = []
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_pending = False
        self.interval = interval
        self._handed: float | None = None  # when the last hand-over was scheduled (None: no delta handed yet)
        self.handovers = 0  # wake-ups scheduled for this stream (tests, diagnostics)

    def put(self, ev: Event) -> None:
        """Engine thread: queue an event, waking the loop unless a wake-up is already on its way (or the delta is
        held back by `interval`)."""
        with self._lock:
            self._buf.append(ev)
            if self._wake_pending:
                return
            if self.interval > 0 and ev.kind == "delta":
                now = time.perf_counter()
                if self._handed is not None and now - self._handed < self.interval:
                    return  # held: goes out with the next event once the interval has passed, or with the end
                self._handed = now
            self._wake_pending = True
            self.handovers += 1
        deferred = getattr(_deferred, "streams", None)
        if deferred is not None:
            deferred.append(self)
            return
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
