"""The workbench app: FastAPI, pages rendered on the server with Jinja2 (autoescaped), one small JS file.

Every asset ships in the package (templates/, static/); nothing is fetched at run time. The project file is
re-read on each request, so an edit (from the UI or an editor) shows at once; a broken file is shown as the
error it is, next to its field, on the Start work page.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmtailor.config import TailorConfig, load_config
from llmtailor.errors import TailorError
from llmtailor.registry.db import Registry
from llmtailor.ui import audit
from llmtailor.ui.jobs import JobConflict, Jobs
from llmtailor.ui.runsview import RunGone
from llmtailor.ui.security import COOKIE, Forbidden, Guard

NAV = (("/", "Runs"), ("/registry", "Registry"), ("/work", "Start work"), ("/data", "Data"),
       ("/playground", "Playground"), ("/retrieval", "Retrieval"))


class UIError(Exception):
    """A user-facing failure with its HTTP status (400 bad input, 404 unknown, 409 conflict)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Workbench:
    """What the routes share: the project file, the registry, the jobs, the CSRF guard, the playground."""

    def __init__(self, config_path: Path, guard: Guard, *, serve_engine: Any = None, serve_url: str | None = None):
        self.config_path = config_path.resolve()
        self.guard = guard
        cfg = load_config(self.config_path)
        self.registry = Registry.for_config(cfg)
        audit.ensure_table(self.registry)
        self.jobs = Jobs(cfg.runs_dir / ".workbench-jobs")
        self.serve_engine = serve_engine
        self.serve_url = serve_url
        self.playground: Any = None  # llmtailor.ui.playground.Playground, started on first use
        self.retrievers: dict[str, Any] = {}  # index folder -> open Retriever (Retrieval page, passages)
        self.promote_lock = threading.Lock()  # promote/rollback: check the stage's head and write, one at a time
        self.play_lock = threading.Lock()  # the playground's server is started once
        self.env = Environment(loader=PackageLoader("llmtailor.ui", "templates"),
                               autoescape=select_autoescape(["html"], default=True))

    def config(self) -> TailorConfig:
        try:
            return load_config(self.config_path)
        except TailorError as e:
            raise UIError(400, f"{e} (fix it on the Start work page)") from None

    def audit(self, request: Request, action: str, target: str | None, outcome: str, **detail: Any) -> None:
        audit.record(self.registry, self.guard.actor(request), action, target, outcome, detail)

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        page = self.env.get_template(name).render(csrf=self.guard.csrf, nav=NAV, path=request.url.path,
                                                  project=self._project_label(), **ctx)
        return HTMLResponse(page, status_code=status)

    def _project_label(self) -> str:
        try:
            return f"{load_config(self.config_path).project} · {self.config_path.name}"
        except TailorError:
            return f"{self.config_path.name} (invalid)"

    def close(self) -> None:
        if self.playground is not None:
            self.playground.close()
        for retriever in self.retrievers.values():
            retriever.close()
        self.jobs.close()
        self.registry.close()


def create_app(config_path: str | Path, *, admin_key: str | None = None, serve_engine: Any = None,
               serve_url: str | None = None) -> FastAPI:
    """The workbench for one project file. `serve_engine`: an Engine for the playground (tests); `serve_url`:
    use a running `tailor serve` instead of an in-process one."""
    from llmtailor.ui import routes_data, routes_play, routes_registry, routes_runs, routes_search, routes_work

    guard = Guard(admin_key)
    wb = Workbench(Path(config_path), guard, serve_engine=serve_engine, serve_url=serve_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            wb.close()

    app = FastAPI(title="llmtailor workbench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.wb = wb
    app.mount("/static", StaticFiles(directory=str(resources.files("llmtailor.ui") / "static")), name="static")

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if request.url.path == "/login" or request.url.path.startswith("/static/"):
            return await call_next(request)
        if not guard.authenticated(request):
            return wb.render(request, "error.html", 401, title="Admin key needed",
                             message="This workbench needs its admin key: open /login?key=YOUR_KEY once.")
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                    "img-src 'self' data:; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/login")
    async def login(request: Request, key: str = "") -> Response:
        if not admin_key:
            return RedirectResponse("/", 303)
        resp = RedirectResponse("/", 303)
        if key and hmac.compare_digest(key.encode(), admin_key.encode()):
            resp.set_cookie(COOKIE, key, httponly=True, samesite="strict")
            return resp
        return wb.render(request, "error.html", 401, title="Wrong key", message="That is not this workbench's key.")

    # Exceptions the pages raise, and the status each answers with (None: the exception's own `status`).
    statuses: dict[type[Exception], int | None] = {UIError: None, RunGone: 404, Forbidden: None, JobConflict: 409,
                                                    TailorError: 400}

    async def _known(request: Request, exc: Exception) -> Response:
        status = next(statuses[k] for k in type(exc).__mro__ if k in statuses)  # the most specific class wins
        return _error(wb, request, status if status is not None else exc.status, str(exc))  # type: ignore[attr-defined]

    for cls in statuses:
        app.add_exception_handler(cls, _known)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        """A malformed query or form value (`?page=abc`): a 400 naming the field, not FastAPI's raw 422 JSON."""
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
        return _error(wb, request, 400, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(wb, request, exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    for module in (routes_runs, routes_registry, routes_work, routes_data, routes_play, routes_search):
        app.include_router(module.router)
    return app


def _error(wb: Workbench, request: Request, status: int, message: str) -> Response:
    """JSON for API calls (the JS shows `error`), a page for the browser."""
    if request.url.path.startswith("/api/"):
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": message}, status_code=status)
    titles = {400: "Bad input", 401: "Admin key needed", 403: "Forbidden", 404: "Not found", 409: "Conflict"}
    return wb.render(request, "error.html", status, title=titles.get(status, "Error"), message=message)
