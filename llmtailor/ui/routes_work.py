"""Start work: edit and validate the project file, start prepare/train/eval/run, stop and resume a training.

The editor validates with the CLI's own parser (`parse_config`), so a bad value is reported with the same
`file:line: field: problem` text, listed beside the editor with the field marked, and the file is not touched.
A valid edit replaces the file atomically.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from llmtailor.config import parse_config
from llmtailor.errors import ConfigError, TailorError
from llmtailor.io import write_text
from llmtailor.runs import list_runs, read_run
from llmtailor.ui.app import UIError
from llmtailor.ui.jobs import KINDS
from llmtailor.ui.runsview import RunGone, find_run

router = APIRouter()


def _errors(e: TailorError) -> list[dict[str, Any]]:
    found = getattr(e, "all", None) or [e]
    out = []
    for err in found:
        if isinstance(err, ConfigError):
            out.append({"field": err.field or "", "line": err.line, "text": str(err)})
        else:
            out.append({"field": "", "line": None, "text": str(err)})
    return out


def _page(request: Request, *, text: str | None = None, errors: list[dict[str, Any]] | None = None,
          start_errors: dict[str, str] | None = None, status: int = 200, saved: bool = False,
          form: dict[str, Any] | None = None) -> HTMLResponse:
    wb = request.app.state.wb
    if text is None:
        text = wb.config_path.read_text(encoding="utf-8")
    runs: list[dict[str, Any]] = []
    try:
        cfg = parse_config(wb.config_path.read_text(encoding="utf-8"), wb.config_path)
        runs = [{"id": r.name, "status": read_run(r).get("status")} for r in reversed(list_runs(cfg.runs_dir))]
    except TailorError:
        pass
    return wb.render(request, "work.html", status, title="Start work", text=text, errors=errors or [],
                     start_errors=start_errors or {}, saved=saved, runs=runs, kinds=list(KINDS),
                     jobs=[j.as_dict() | {"log": j.tail()} for j in wb.jobs.list()], form=form or {},
                     config_path=str(wb.config_path))


@router.get("/work", response_class=HTMLResponse)
async def work_page(request: Request) -> HTMLResponse:
    return _page(request)


@router.post("/work/config", response_class=HTMLResponse)
async def save_config(request: Request) -> HTMLResponse:
    """Validate the edited YAML; write it only when valid ('validate' checks without writing)."""
    wb = request.app.state.wb
    form = await wb.guard.form(request)
    text = str(form.get("text") or "")
    try:
        parse_config(text, wb.config_path)
    except TailorError as e:
        wb.audit(request, "edit-config", str(wb.config_path), "refused", errors=[x["text"] for x in _errors(e)])
        return _page(request, text=text, errors=_errors(e), status=400)
    if form.get("action") == "validate":
        return _page(request, text=text, saved=False)
    write_text(wb.config_path, text)
    wb.audit(request, "edit-config", str(wb.config_path), "ok", chars=len(text))
    return _page(request, saved=True)


@router.post("/work/start")
async def start(request: Request) -> Any:
    wb = request.app.state.wb
    form = await wb.guard.form(request)
    kind = str(form.get("kind") or "")
    problems: dict[str, str] = {}
    extra: list[str] = []
    if kind not in KINDS:
        problems["kind"] = f"choose one of {', '.join(KINDS)}"
    steps = str(form.get("max_steps") or "").strip()
    if steps:
        if not steps.isdigit() or int(steps) < 1:
            problems["max_steps"] = f"must be a whole number >= 1, got {steps!r}"
        elif kind != "train":
            problems["max_steps"] = "only applies to train"
        else:
            extra += ["--max-steps", steps]
    run = str(form.get("run") or "").strip()
    try:
        cfg = parse_config(wb.config_path.read_text(encoding="utf-8"), wb.config_path)
    except TailorError as e:
        return _page(request, errors=_errors(e), status=400,
                     start_errors={"kind": "the project file is invalid: fix the marked fields first"}, form=form)
    if run and kind == "eval":
        try:
            find_run(cfg.runs_dir, run)
        except RunGone as e:
            problems["run"] = str(e)
        extra += ["--run", run]
    if problems:
        wb.audit(request, f"start-{kind or '?'}", str(wb.config_path), "refused", problems=problems)
        return _page(request, start_errors=problems, status=400, form=form)
    job = _start(wb, request, kind, cfg.runs_dir, extra)
    return RedirectResponse(f"/work?job={job.id}", 303)


def _start(wb: Any, request: Request, kind: str, runs_dir: Any, extra: list[str]) -> Any:
    try:
        job = wb.jobs.start(kind, wb.config_path, runs_dir, extra)
    except TailorError as e:
        wb.audit(request, f"start-{kind}", str(wb.config_path), "refused", reason=str(e))
        raise
    wb.audit(request, f"start-{kind}", str(wb.config_path), "ok", job=job.id, command=job.as_dict()["command"])
    return job


@router.post("/work/stop")
async def stop(request: Request) -> RedirectResponse:
    wb = request.app.state.wb
    form = await wb.guard.form(request)
    job_id = str(form.get("job") or "")
    try:
        wb.jobs.stop(job_id, wb.guard.actor(request))
    except TailorError as e:
        wb.audit(request, "stop", job_id, "refused", reason=str(e))
        raise UIError(409, str(e)) from None
    wb.audit(request, "stop", job_id, "ok")
    return RedirectResponse(f"/work?job={job_id}", 303)


@router.post("/work/resume")
async def resume(request: Request) -> RedirectResponse:
    """`tailor train --resume --run ID` on an interrupted run."""
    wb = request.app.state.wb
    form = await wb.guard.form(request)
    cfg = wb.config()
    run_id = str(form.get("run") or "")
    run_dir = find_run(cfg.runs_dir, run_id)
    status = read_run(run_dir).get("status")
    if status == "completed":
        raise UIError(409, f"run {run_id} already completed; nothing to resume")
    job = _start(wb, request, "train", cfg.runs_dir, ["--resume", "--run", run_id])
    return RedirectResponse(f"/work?job={job.id}", 303)


@router.get("/api/jobs")
async def jobs_api(request: Request) -> dict[str, Any]:
    wb = request.app.state.wb
    return {"jobs": [j.as_dict() | {"log": j.tail()} for j in wb.jobs.list()]}
