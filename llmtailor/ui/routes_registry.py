"""Registry: lineage, deployments, and promote / canary / shadow / rollback through `Registry.promote/rollback`.

The buttons call the same registry functions as `tailor promote` and `tailor rollback`, so the same gate check
refuses an adapter whose gates failed unless forced; a forced promotion must say who and why, and both land in
the deployment's note and the audit log. Each form carries the stage's head deployment as the page showed it: if
another browser changed the stage since, the action is refused with what changed (one wins, the other sees why).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from llmtailor.errors import TailorError
from llmtailor.registry.db import STAGES, Deployment, Registry
from llmtailor.registry.hooks import sync_run
from llmtailor.runs import list_runs
from llmtailor.ui import audit
from llmtailor.ui import lineage as lg
from llmtailor.ui.app import UIError

router = APIRouter()
MODES = ("promote", "canary", "shadow")


def stage_head(reg: Registry, stage: str) -> dict[str, Any] | None:
    """The stage's newest deployment row (its current state), or None when never deployed."""
    with reg.session() as s:
        row = s.scalars(select(Deployment).where(Deployment.stage == stage).order_by(Deployment.id.desc())
                        .limit(1)).first()
        if row is None:
            return None
        return {"id": f"dep-{row.id}", "action": row.action, "adapter_id": row.adapter_id,
                "canary_adapter_id": row.canary_adapter_id, "canary_percent": row.canary_percent,
                "shadow_adapter_id": row.shadow_adapter_id, "forced": row.forced, "note": row.note,
                "created": row.created.isoformat(timespec="seconds")}


def _sync_runs(wb: Any) -> None:
    """Register runs made before the registry existed (or by a CLI without it), as `tailor promote` does."""
    cfg = wb.config()
    known = {a["id"] for a in wb.registry.adapters()}
    for run in list_runs(cfg.runs_dir):
        if f"ad-{run.name}" not in known:
            try:
                sync_run(wb.registry, run)
            except (TailorError, OSError):
                continue


def _page_data(wb: Any) -> dict[str, Any]:
    _sync_runs(wb)
    reg = wb.registry
    adapters = []
    for a in reg.adapters():
        ev = reg.latest_evaluation(a["id"])
        adapters.append({**a, "evaluation": ev["id"] if ev else None,
                         "passed": ev["passed"] if ev else None, "lineage": reg.lineage(a["id"])})
    history = [d for d in reg.list("deployment")]
    history.reverse()
    return {"adapters": adapters, "heads": {s: stage_head(reg, s) for s in STAGES}, "history": history,
            "audit": audit.entries(reg, 50), "stages": STAGES}


@router.get("/registry", response_class=HTMLResponse)
async def registry_page(request: Request, done: str = "") -> HTMLResponse:
    wb = request.app.state.wb
    data = await asyncio.to_thread(_page_data, wb)
    return wb.render(request, "registry.html", title="Registry and lineage", done=done, **data)


def _lineage(wb: Any, item: str) -> dict[str, Any]:
    _sync_runs(wb)
    cfg = wb.config()
    if not item:  # the newest adapter, else the newest item of any kind
        newest = wb.registry.adapters() or wb.registry.list()
        if not newest:
            raise UIError(404, "the registry is empty: train (or prepare) something first")
        item = str(newest[-1]["id"])
    try:
        return lg.graph_for(wb.registry, cfg, item)
    except TailorError as e:
        raise UIError(404, f"item: {e}") from None


@router.get("/lineage", response_class=HTMLResponse)
async def lineage_page(request: Request, item: str = "") -> HTMLResponse:
    """Every recorded edge into and out of one item: parent adapters, merges, exports, indexes, aliases."""
    wb = request.app.state.wb
    graph = await asyncio.to_thread(_lineage, wb, item)
    items = await asyncio.to_thread(wb.registry.list)
    return wb.render(request, "lineage.html", title=f"Lineage of {graph['root']}", graph=graph,
                     chart=lg.svg(graph), items=[(i["kind"], str(i["id"])) for i in reversed(items)])


@router.get("/api/lineage")
async def lineage_api(request: Request, item: str = "") -> dict[str, Any]:
    return await asyncio.to_thread(_lineage, request.app.state.wb, item)


def _number(value: Any, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UIError(400, f"{field}: expected a number, got {value!r}") from None


@router.post("/registry/promote")
async def promote(request: Request) -> RedirectResponse:
    wb = request.app.state.wb
    form = await wb.guard.form(request)
    adapter = str(form.get("adapter") or "").strip()
    stage = str(form.get("stage") or "production")
    mode = str(form.get("mode") or "promote")
    force = str(form.get("force") or "") in ("1", "on", "true")
    who, why = str(form.get("who") or "").strip(), str(form.get("why") or "").strip()
    expected = form.get(f"expected_{stage}", form.get("expected"))
    if not adapter:
        raise UIError(400, "adapter: choose an adapter to deploy")
    if mode not in MODES:
        raise UIError(400, f"mode: {mode!r} is not one of {', '.join(MODES)}")
    if stage not in STAGES:
        raise UIError(400, f"stage: {stage!r} is not one of {', '.join(STAGES)}")
    canary = _number(form.get("percent"), "percent") if mode == "canary" else None
    if canary is not None and not 0 < canary < 100:
        raise UIError(400, f"percent: a canary gets between 0 and 100 percent of the traffic (exclusive), "
                           f"got {canary:g}")
    if force and (not who or not why):
        wb.audit(request, mode, f"{adapter} -> {stage} ({mode})", "refused", reason="force without who and why")
        raise UIError(400, "force: a forced promotion must say who forces it and why (both fields)")
    note = f"forced by {who}: {why}" if force else (why or None)
    target = f"{adapter} -> {stage} ({mode})"

    def act() -> dict[str, Any]:
        with wb.promote_lock:  # read the head and write the new row with no other workbench action between
            head = stage_head(wb.registry, stage)
            current = head["id"] if head else "none"
            if expected is not None and str(expected) != current:
                what = (f"{head['action']} of {head['canary_adapter_id'] or head['adapter_id']} at {head['created']}"
                        if head else "nothing")
                wb.audit(request, mode, target, "refused", reason="stale page", expected=expected, current=current)
                raise UIError(409, f"{stage} changed since your page was loaded: it is now {current} ({what}); "
                                   "reload the page and decide again")
            try:
                row = wb.registry.promote(adapter, stage, force=force, canary=canary, shadow=mode == "shadow",
                                          note=note)
            except TailorError as e:
                msg = str(e).replace("use --force to override", "tick Force (with who and why) to override")
                wb.audit(request, mode, target, "refused", reason=msg)
                raise UIError(409 if "refusing" in msg else 400, msg) from None
            wb.audit(request, mode, target, "ok", deployment=row["id"], forced=bool(row.get("warning")),
                     who=who or None, why=why or None, warning=row.get("warning"))
            return row

    row = await asyncio.to_thread(act)
    return RedirectResponse(f"/registry?done={row['id']}", 303)


@router.post("/registry/rollback")
async def rollback(request: Request) -> RedirectResponse:
    wb = request.app.state.wb
    form = await wb.guard.form(request)
    stage = str(form.get("stage") or "production")
    expected = form.get("expected")
    if stage not in STAGES:
        raise UIError(400, f"stage: {stage!r} is not one of {', '.join(STAGES)}")

    def act() -> dict[str, Any]:
        with wb.promote_lock:
            head = stage_head(wb.registry, stage)
            current = head["id"] if head else "none"
            if expected is not None and str(expected) != current:
                wb.audit(request, "rollback", stage, "refused", reason="stale page", expected=expected,
                         current=current)
                raise UIError(409, f"{stage} changed since your page was loaded: it is now {current}; reload the "
                                   "page and decide again")
            try:
                row = wb.registry.rollback(stage)
            except TailorError as e:
                wb.audit(request, "rollback", stage, "refused", reason=str(e))
                raise UIError(409, str(e)) from None
            wb.audit(request, "rollback", stage, "ok", deployment=row["id"], note=row.get("note"))
            return row

    row = await asyncio.to_thread(act)
    return RedirectResponse(f"/registry?done={row['id']}", 303)
