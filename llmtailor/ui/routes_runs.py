"""Runs: the table, one run, a comparison of several, and the live loss curve (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from markupsafe import Markup

from llmtailor.ui import runsview as rv
from llmtailor.ui.app import UIError

router = APIRouter()
FINISHED = ("completed", "failed", "interrupted")
POLL_S = 0.5


@router.get("/", response_class=HTMLResponse)
async def runs_page(request: Request) -> HTMLResponse:
    wb = request.app.state.wb
    cfg = wb.config()
    rows = await asyncio.to_thread(rv.all_summaries, cfg.runs_dir)
    return wb.render(request, "runs.html", title="Runs", runs=rows, runs_dir=str(cfg.runs_dir))


@router.get("/api/runs")
async def runs_api(request: Request) -> dict[str, Any]:
    """The runs table as JSON, polled by the runs page so new and running runs update without a reload."""
    cfg = request.app.state.wb.config()
    return {"runs": await asyncio.to_thread(rv.all_summaries, cfg.runs_dir)}


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, run_id: str) -> HTMLResponse:
    wb = request.app.state.wb
    cfg = wb.config()
    run_dir = rv.find_run(cfg.runs_dir, run_id)
    info = rv.read_info(run_dir)
    res = rv.results(run_dir)
    points, _ = rv.curve(run_dir)
    gates = (res.get("gates") or info.get("gates") or {}).get("results") or []
    jobs = [j.as_dict() for j in wb.jobs.list() if j.running and j.kind in ("train", "run")]
    return wb.render(request, "run.html", title=f"Run {run_id}", run_id=run_id, info=info,
                     summary=rv.summary(run_dir), chart=Markup(rv.svg_curves([(run_id, points)])),
                     npoints=len(points), gates=gates, ladder=rv.ladder([run_dir]), jobs=jobs,
                     info_json=json.dumps(info, indent=2, default=str))


@router.get("/compare", response_class=HTMLResponse)
async def compare_page(request: Request, ids: list[str] = Query(default_factory=list)) -> HTMLResponse:
    wb = request.app.state.wb
    cfg = wb.config()
    ids = list(dict.fromkeys(i for i in ids if i))
    if len(ids) < 2:
        raise UIError(400, "select at least two runs to compare")
    dirs = [rv.find_run(cfg.runs_dir, i) for i in ids]
    series = [(d.name, rv.curve(d)[0]) for d in dirs]
    colors = [rv.PALETTE[i % len(rv.PALETTE)] for i in range(len(ids))]
    return wb.render(request, "compare.html", title="Compare runs", ids=ids, colors=colors,
                     chart=Markup(rv.svg_curves(series)), diff=rv.config_diff(dirs), ladder=rv.ladder(dirs),
                     disagree=rv.disagreements(dirs), summaries=[rv.summary(d) for d in dirs])


@router.get("/api/runs/{run_id}/curve")
async def curve_api(request: Request, run_id: str) -> dict[str, Any]:
    cfg = request.app.state.wb.config()
    run_dir = rv.find_run(cfg.runs_dir, run_id)
    points, _ = rv.curve(run_dir)
    return {"run": run_id, "status": rv.read_info(run_dir).get("status"), "points": points}


@router.get("/runs/{run_id}/events")
async def run_events(request: Request, run_id: str) -> StreamingResponse:
    """New loss points as they are appended to metrics.jsonl, then the final status; `gone` if the folder goes."""
    cfg = request.app.state.wb.config()
    run_dir = rv.find_run(cfg.runs_dir, run_id)

    async def events() -> AsyncIterator[str]:
        line = 0
        status = None
        while not await request.is_disconnected():
            try:
                points, line = await asyncio.to_thread(rv.curve, run_dir, line)
                new_status = rv.read_info(run_dir).get("status")
            except rv.RunGone:
                yield _event("gone", {"run": run_id, "message": f"run folder {run_dir} was deleted"})
                return
            if points:
                yield _event("points", {"points": points})
            if new_status != status:
                status = new_status
                yield _event("status", {"status": status})
            if status in FINISHED:
                points, line = await asyncio.to_thread(rv.curve, run_dir, line)
                if points:
                    yield _event("points", {"points": points})
                yield _event("done", {"status": status})
                return
            await asyncio.sleep(POLL_S)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
