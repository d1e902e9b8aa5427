"""The hand-over from the engine thread to the event loop (EventStream): events that arrive while the loop is busy
come out together in one batch, in order, with one loop wake-up; the final event ends the iteration; `abort` (the
client left) cancels the request and ends it too."""

from __future__ import annotations

import asyncio
import threading

from llmtailor.serve.engine import Event, EventStream, GenRequest


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
