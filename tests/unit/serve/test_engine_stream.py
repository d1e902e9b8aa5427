"""The hand-over from the engine thread to the event loop (EventStream): events that arrive while the loop is busy
come out together in one batch, in order, with one loop wake-up; the final event ends the iteration; `abort` (the
client left) cancels the request and ends it too. With an interval, deltas after a hand-over wait for it to pass (the
first one and the end never wait); inside `deferred_wakeups` (one engine step) all streams wake their loop once."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from llmtailor.serve import requests as requests_mod
from llmtailor.serve.engine import Event, EventStream, GenRequest
from llmtailor.serve.requests import deferred_wakeups


def test_events_arriving_while_the_loop_is_busy_come_out_in_one_batch():
    async def run() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        stream = EventStream(GenRequest([1, 2], 8), loop)
        wakeups = 0
        wake = stream._wake

        def counted() -> None:
            nonlocal wakeups
            wakeups += 1
            wake()

        stream._wake = counted

        def produce() -> None:
            for t in "abcde":
                stream.put(Event("delta", t))
            stream.put(Event("done", finish_reason="stop"))

        t = threading.Thread(target=produce)
        t.start()
        t.join()  # everything arrived before the loop looks: one batch, one wake-up
        out = [[ev.text or ev.kind for ev in batch] async for batch in stream.batches()]
        await asyncio.sleep(0.01)  # let the scheduled wake-up run
        assert wakeups == 1
        return out

    assert asyncio.run(run()) == [["a", "b", "c", "d", "e", "done"]]


def test_events_are_delivered_as_produced_and_abort_ends_the_stream():
    async def run() -> tuple[list[str], GenRequest]:
        loop = asyncio.get_running_loop()
        req = GenRequest([1, 2], 8)
        stream = EventStream(req, loop)
        seen: list[str] = []
        go = threading.Event()

        def produce() -> None:
            for t in "xyz":
                go.wait(5)
                go.clear()
                stream.put(Event("delta", t))

        threading.Thread(target=produce, daemon=True).start()
        go.set()
        async for ev in stream:
            seen.append(ev.text or f"{ev.kind}:{ev.finish_reason}")
            if len(seen) < 3:
                go.set()  # the next token only after this one was read: one event per batch
            else:
                stream.abort()
        return seen, req

    seen, req = asyncio.run(run())
    assert seen == ["x", "y", "z", "done:cancelled"]
    assert req.cancelled.is_set()


def test_an_interval_holds_later_deltas_but_never_the_first_one_or_the_end():
    first_seen = threading.Event()

    def produce(stream: EventStream) -> None:
        stream.put(Event("delta", "a"))
        assert first_seen.wait(5), "the first delta was held back"
        for t in "bcd":
            stream.put(Event("delta", t))  # within the interval: no wake-up
        assert stream.handovers == 1
        stream.put(Event("done", finish_reason="length"))

    async def run() -> tuple[list[list[str]], int]:
        stream = EventStream(GenRequest([1, 2], 8), asyncio.get_running_loop(), interval=60.0)
        t = threading.Thread(target=produce, args=(stream,), daemon=True)
        t.start()
        out = []
        async for batch in stream.batches():
            out.append([ev.text or ev.kind for ev in batch])
            first_seen.set()
        t.join(5)
        return out, stream.handovers

    batches, handovers = asyncio.run(run())
    assert batches == [["a"], ["b", "c", "d", "done"]]  # every token, in order, in two hand-overs
    assert handovers == 2


def test_a_delta_after_the_interval_is_handed_over_with_the_ones_held_before_it(monkeypatch):
    # A fake clock: on a loaded CI machine the loop may take longer than any real interval to wake, which would
    # hand "b" over alone; the stream's rule is about elapsed time, so the test controls time.
    clock = [100.0]
    monkeypatch.setattr(requests_mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    seen = [threading.Event(), threading.Event()]

    def produce(stream: EventStream) -> None:
        stream.put(Event("delta", "a"))
        assert seen[0].wait(5)
        clock[0] += 0.1
        stream.put(Event("delta", "b"))  # held: well within the interval after the hand-over of "a"
        clock[0] += 0.45
        stream.put(Event("delta", "c"))  # the interval has passed: "b" and "c" go out now, before the end
        assert seen[1].wait(5)
        stream.put(Event("done", finish_reason="stop"))

    async def run() -> list[list[str]]:
        stream = EventStream(GenRequest([1], 8), asyncio.get_running_loop(), interval=0.5)
        t = threading.Thread(target=produce, args=(stream,), daemon=True)
        t.start()
        out = []
        async for batch in stream.batches():
            out.append([ev.text or ev.kind for ev in batch])
            seen[min(len(out), 2) - 1].set()
        t.join(5)
        return out

    assert asyncio.run(run()) == [["a"], ["b", "c"], ["done"]]


def test_deferred_wakeups_wake_each_loop_once_for_every_stream_of_a_step():
    async def run() -> tuple[list[list[list[str]]], list[int]]:
        loop = asyncio.get_running_loop()
        streams = [EventStream(GenRequest([1], 8), loop) for _ in range(3)]
        scheduled: list[int] = []
        real = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            scheduled.append(1)
            return real(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        counts: list[int] = []

        def step() -> None:
            with deferred_wakeups():
                for s in streams:
                    s.put(Event("delta", "x"))
                    s.put(Event("delta", "y"))
                with deferred_wakeups():  # nested: joins the outer block
                    streams[0].put(Event("delta", "z"))
                counts.append(len(scheduled))
            counts.append(len(scheduled))
            for s in streams:
                s.put(Event("done", finish_reason="stop"))

        async def read(s: EventStream) -> list[list[str]]:
            return [[ev.text or ev.kind for ev in batch] async for batch in s.batches()]

        readers = [asyncio.ensure_future(read(s)) for s in streams]
        await asyncio.sleep(0)  # the readers wait
        t = threading.Thread(target=step)
        t.start()
        await asyncio.to_thread(t.join)
        out = await asyncio.gather(*readers)
        return out, counts

    out, (inside, after) = asyncio.run(run())
    assert inside == 0  # nothing woke the loop during the step
    assert after == 1  # then one wake-up for the step's three streams
    assert out[0] in ([["x", "y", "z"], ["done"]], [["x", "y", "z", "done"]])
    assert out[1] in ([["x", "y"], ["done"]], [["x", "y", "done"]])
