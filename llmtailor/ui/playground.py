"""The playground's model server: the project's own `tailor serve` app, started in this process on a loopback port.

Running the real serve app (rather than a second generation path) means the playground answers exactly as
production would: the same prompt renderer, adapters, aliases, `@production`/`@staging` deployments, RAG citations,
guardrails, structured output, and request log, so a thumbs up/down lands in the same feedback table the monitor
reads. It listens on 127.0.0.1 on a free port. Its API-key check stays as configured: the workbench asks as a chosen
tenant (groups, level) with a key it creates for that caller, named "workbench playground", and revokes when it
stops, so tenant-restricted aliases and RAG access control answer as they would for that tenant. With
`--serve-url` an already running server is used instead (key from LLMTAILOR_UI_SERVE_KEY).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from llmtailor.config import TailorConfig
from llmtailor.errors import TailorError
from llmtailor.serve.config import served_base_name


def variants(cfg: TailorConfig) -> list[dict[str, str]]:
    """Every model name worth asking: the base, the deployed stages, and each (non-routing) alias."""
    base = served_base_name(cfg.model.base_model, cfg.serve.base_name)
    out = [{"name": base, "kind": "base"}, {"name": cfg.project, "kind": "production"},
           {"name": f"{cfg.project}:staging", "kind": "staging"}]
    for name, alias in cfg.serve.aliases.items():
        kind = "rag" if alias.index else ("route" if alias.route else "alias")
        out.append({"name": name, "kind": kind})
    return out


class Playground:
    """A serve app on a loopback port (or a remote URL), and an HTTP client that streams from it."""

    def __init__(self, cfg: TailorConfig, *, engine: Any = None, url: str | None = None, key: str | None = None):
        self.cfg = cfg
        self.key = key
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.serve_app: Any = None
        self._registry: Any = None
        self._keys: dict[tuple[str, tuple[str, ...], int], tuple[int, str]] = {}
        self._keys_lock = threading.Lock()
        if url:
            self.url = url.rstrip("/")
        else:
            self.url = self._start(engine)

    def _start(self, engine: Any) -> str:
        import uvicorn

        from llmtailor.registry.db import Registry
        from llmtailor.serve.app import create_app

        self._registry = Registry.for_config(self.cfg)
        self.serve_app = create_app(self.cfg, engine=engine, registry=self._registry)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.serve_app, host="127.0.0.1", port=port,
                                                     log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="workbench-serve", daemon=True)
        self._thread.start()
        deadline = time.time() + 120
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise TailorError("the playground's model server did not start (see the workbench's log)")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    def caller_key(self, tenant: str, groups: tuple[str, ...], level: int) -> tuple[str | None, str | None]:
        """(secret, id if it was created just now) of the in-process server's key for this caller (created once,
        revoked on close)."""
        if self.serve_app is None:
            return self.key, None
        with self._keys_lock:
            found = self._keys.get((tenant, groups, level))
            if found is not None:
                return found[1], None
            found = self._registry.create_key(tenant, list(groups), ["*"], level=level,
                                              name="workbench playground (temporary)")
            self._keys[(tenant, groups, level)] = found
            return found[1], f"key-{found[0]}"

    async def stream(self, model: str, prompt: str, schema: dict[str, Any] | None, max_tokens: int,
                     key: str | None = None) -> AsyncIterator[str]:
        """The server's SSE lines for one chat request, relayed as they arrive (errors become one `error` event)."""
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                                "max_tokens": max_tokens}
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10)) as client:
            async with client.stream("POST", self.url + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"} if key else {}) as resp:
                if resp.status_code != 200:
                    raw = await resp.aread()
                    try:
                        msg = json.loads(raw)["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        msg = raw.decode("utf-8", "replace")[:500]
                    yield "data: " + json.dumps({"error": {"message": msg, "status": resp.status_code}}) + "\n\n"
                    return
                async for line in resp.aiter_lines():
                    if line:
                        yield line + "\n\n"

    def feedback(self, request_id: str, rating: str, comment: str | None) -> str:
        """Into the registry's feedback table, exactly as POST /v1/feedback writes it."""
        if self.serve_app is None:
            r = httpx.post(self.url + "/v1/feedback", json={"id": request_id, "rating": rating, "comment": comment},
                           headers={"Authorization": f"Bearer {self.key}"} if self.key else {}, timeout=30)
            if r.status_code != 200:
                raise TailorError(f"feedback refused by {self.url}: {r.text[:300]}")
            return str(r.json().get("id"))
        server = self.serve_app.state.server
        if server.logger is None:
            raise TailorError("feedback needs request logging (serve.log_requests: true)")
        server.logger.flush()
        from llmtailor.registry.db import RequestLog

        with self._registry.session() as s:
            row = s.get(RequestLog, request_id)
            key_id = row.key_id if row is not None else None
        if row is None:
            raise TailorError(f"no answer {request_id!r} was logged by the playground")
        return f"fb-{self._registry.add_feedback(request_id, rating, comment, key_id)}"

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=30)
        if self._registry is not None:
            for key_id, _ in self._keys.values():
                self._registry.revoke_key(f"key-{key_id}")
            self._registry.close()
