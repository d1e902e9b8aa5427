"""Safe by default: loopback unless told otherwise, an admin key anywhere else, a CSRF token on every POST.

The CSRF token is one random value per workbench process, put into every page; a POST must send it back (form
field `csrf` or header `X-CSRF-Token`). Another site's page can make the browser POST here but cannot read our
pages, so it cannot know the token. The admin key, when set, is exchanged once for an HttpOnly, SameSite=Strict
cookie (`/login?key=...`) or sent as `Authorization: Bearer KEY` by scripts.
"""

from __future__ import annotations

import getpass
import hmac
import ipaddress
import secrets
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request

from llmtailor.errors import TailorError

COOKIE = "tailor_ui_key"


class Forbidden(Exception):
    """A request without the right CSRF token or admin key (answered 403 / 401, and never acted on)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, admin_key: str | None) -> None:
    """Refuse to listen beyond this machine without an admin key: the workbench can promote and train."""
    if not is_loopback(host) and not admin_key:
        raise TailorError(f"--host {host}: the workbench would be reachable from other machines; set an admin key "
                          "with --admin-key or LLMTAILOR_UI_KEY (or bind 127.0.0.1)")
    if admin_key is not None and len(admin_key) < 16:
        raise TailorError("the admin key must be at least 16 characters (e.g. `python -c 'import secrets; "
                          "print(secrets.token_urlsafe(24))'`)")


class Guard:
    """The process's CSRF token and the optional admin key."""

    def __init__(self, admin_key: str | None):
        self.admin_key = admin_key
        self.csrf = secrets.token_urlsafe(32)

    def authenticated(self, request: Request) -> bool:
        if not self.admin_key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.admin_key.encode())

    async def form(self, request: Request) -> dict[str, Any]:
        """The POSTed form (or JSON body), after checking its CSRF token; raises Forbidden (403) otherwise."""
        data: dict[str, Any]
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                body = None
            data = body if isinstance(body, dict) else {}
        else:  # application/x-www-form-urlencoded: every form here (no uploads, so no python-multipart needed)
            pairs = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
            data = {k: v if len(v) > 1 else v[0] for k, v in pairs.items()}
        token = request.headers.get("x-csrf-token") or data.get("csrf") or ""
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.csrf.encode()):
            raise Forbidden(403, "missing or wrong CSRF token: reload the page and try again")
        return data

    def actor(self, request: Request) -> str:
        """Who did it, for the audit log: the OS user running the workbench (or 'admin-key') and the client."""
        who = "admin-key" if self.admin_key else _user()
        client = request.client.host if request.client else "?"
        return f"{who}@{client}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
