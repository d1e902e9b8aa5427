"""A real OpenAI-compatible HTTP server in a thread, scripted per request, that can die mid-run.

It stands in for a generator or teacher endpoint "outside the machine": the code under test talks to it over TCP
with httpx, exactly as it would talk to vLLM or `tailor serve`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# reply(messages, n) -> str (a normal completion), or a tuple (status, raw body), or ("sleep", seconds)
Reply = Callable[[list[dict], int], Any]


class FakeOpenAI:
    """`with FakeOpenAI(reply, die_after=k) as srv: srv.base_url` -- after k answers the server shuts down."""

    def __init__(self, reply: Reply, die_after: int | None = None):
        self.reply, self.die_after, self.requests = reply, die_after, 0
        self.bodies: list[dict] = []  # every request body, in arrival order
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    n = outer.requests
                    outer.bodies.append(body)
                out = outer.reply(body["messages"], n)
                if isinstance(out, tuple) and out[0] == "sleep":
                    time.sleep(out[1])
                    out = "late"
                if isinstance(out, tuple):
                    status, raw = out
                else:
                    status = 200
                    raw = json.dumps({"id": f"c{n}", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}]})
                data = raw.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    return
                if outer.die_after is not None and n >= outer.die_after:
                    threading.Thread(target=outer.stop, daemon=True).start()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.shutdown()
            self.server.server_close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def given_prompt(messages: list[dict]) -> str | None:
    """The instruction inside an Evol-Instruct prompt, or None for a plain chat."""
    text = messages[-1]["content"]
    if "#The Given Prompt#:\n" not in text:
        return None
    return text.split("#The Given Prompt#:\n", 1)[1].split("\n\n#", 1)[0]
