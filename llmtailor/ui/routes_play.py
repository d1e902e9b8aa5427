"""Playground: one prompt to several variants side by side (streamed), JSON-schema toggle, thumbs up/down."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from llmtailor.errors import TailorError
from llmtailor.ui.app import UIError
from llmtailor.ui.playground import Playground, variants

router = APIRouter()
DEFAULT_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@router.get("/playground", response_class=HTMLResponse)
async def playground_page(request: Request) -> HTMLResponse:
    wb = request.app.state.wb
    cfg = wb.config()
    return wb.render(request, "playground.html", title="Playground", variants=variants(cfg),
                     schema=json.dumps(DEFAULT_SCHEMA, indent=2), max_tokens=cfg.serve.max_tokens_default,
                     tenant=cfg.project)


def _playground(wb: Any) -> Playground:
    with wb.play_lock:
        if wb.playground is None:
            wb.playground = Playground(wb.config(), engine=wb.serve_engine, url=wb.serve_url)
        return wb.playground


@router.post("/api/play")
async def play(request: Request) -> StreamingResponse:
    """Relay the model server's stream for one variant (the browser opens one per variant, side by side)."""
    wb = request.app.state.wb
    body = await wb.guard.form(request)
    model, prompt = str(body.get("model") or ""), str(body.get("prompt") or "")
    if not prompt.strip():
        raise UIError(400, "prompt: write a prompt first")
    known = {v["name"] for v in variants(wb.config())}
    if model not in known:
        raise UIError(400, f"model: {model!r} is not one of {', '.join(sorted(known))}")
    schema = None
    if body.get("json_schema"):
        raw = body["json_schema"]
        try:
            schema = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as e:
            raise UIError(400, f"json_schema: not valid JSON ({e})") from None
        if not isinstance(schema, dict):
            raise UIError(400, "json_schema: must be a JSON object")
    try:
        max_tokens = int(body.get("max_tokens") or wb.config().serve.max_tokens_default)
    except (TypeError, ValueError):
        raise UIError(400, "max_tokens: expected a whole number") from None
    from llmtailor.rag.acl import Caller

    try:
        caller = Caller.of(str(body.get("tenant") or wb.config().project), body.get("groups") or None,
                           body.get("level") or None)
    except TailorError as e:
        raise UIError(400, f"level: {e}") from None
    pg = await asyncio.to_thread(_playground, wb)
    key, created = await asyncio.to_thread(pg.caller_key, caller.tenant, caller.groups, caller.level)
    if created:
        wb.audit(request, "playground-key", created, "ok", tenant=caller.tenant, groups=list(caller.groups),
                 level=caller.level)
    return StreamingResponse(pg.stream(model, prompt, schema, max_tokens, key), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@router.post("/api/feedback")
async def feedback(request: Request) -> dict[str, Any]:
    wb = request.app.state.wb
    body = await wb.guard.form(request)
    rid, rating = str(body.get("id") or ""), str(body.get("rating") or "")
    if rating not in ("up", "down"):
        raise UIError(400, "rating: use up or down")
    if wb.playground is None:
        raise UIError(409, "ask the playground something first")
    comment = body.get("comment") or None
    try:
        fid = await asyncio.to_thread(wb.playground.feedback, rid, rating, comment)
    except Exception as e:
        wb.audit(request, "feedback", rid, "refused", rating=rating, reason=str(e))
        raise UIError(404, str(e)) from None
    wb.audit(request, "feedback", rid, "ok", rating=rating, feedback=fid)
    return {"id": fid, "request_id": rid, "rating": rating}
