"""Data: dataset versions with their data cards, and a row browser (search, split and source filters).

Rows are shown as data, never markup: every value goes through the template's autoescaping.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from llmtailor.data.versions import load_version
from llmtailor.errors import TailorError
from llmtailor.ui.app import UIError

router = APIRouter()
HASH = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PAGE = 50


def _versions(output_dir: Path) -> list[dict[str, Any]]:
    out = []
    if output_dir.is_dir():
        for d in output_dir.iterdir():
            if d.name.startswith(".") or not (d / "card.json").is_file():
                continue
            try:
                card = load_version(d).card
            except (TailorError, ValueError, OSError):
                continue
            out.append({"hash": d.name, "created": card.get("created", ""), "train": card.get("train_rows"),
                        "eval": card.get("eval_rows"), "rows_in": card.get("rows_in"),
                        "leakage": (card.get("leakage") or {}).get("count")})
    return sorted(out, key=lambda v: str(v["created"]), reverse=True)


@router.get("/data", response_class=HTMLResponse)
async def data_page(request: Request) -> HTMLResponse:
    wb = request.app.state.wb
    cfg = wb.config()
    out_dir = cfg.data.output_dir if cfg.data.output_dir.is_absolute() else cfg.base_dir / cfg.data.output_dir
    return wb.render(request, "data.html", title="Data", versions=_versions(out_dir), output_dir=str(out_dir))


def _origin(row: dict[str, Any]) -> str:
    for key in ("source", "origin"):
        if isinstance(row.get(key), str):
            return row[key]
    return ""


def _rows(path: Path, split: str, q: str, origin: str) -> tuple[list[dict[str, Any]], int, list[str]]:
    out, origins = [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return [], 0, []
    total = 0
    for lineno, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        o = _origin(row)
        if o:
            origins.add(o)
        if origin and o != origin:
            continue
        messages = row.get("messages") or []
        text = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages if isinstance(m, dict))
        if q and q.lower() not in text.lower():
            continue
        total += 1
        out.append({"split": split, "line": lineno, "origin": o, "messages": messages})
    return out, total, sorted(origins)


@router.get("/data/{version}", response_class=HTMLResponse)
async def version_page(request: Request, version: str, q: str = "", split: str = "train", origin: str = "",
                       page: int = 1) -> HTMLResponse:
    wb = request.app.state.wb
    cfg = wb.config()
    out_dir = cfg.data.output_dir if cfg.data.output_dir.is_absolute() else cfg.base_dir / cfg.data.output_dir
    if not HASH.match(version) or not (out_dir / version / "card.json").is_file():
        raise UIError(404, f"dataset version {version!r} not found in {out_dir}")
    if split not in ("train", "eval"):
        raise UIError(400, f"split: use train or eval, got {split!r}")
    card = load_version(out_dir / version).card
    rows, total, origins = _rows(out_dir / version / f"{split}.jsonl", split, q, origin)
    page = max(1, page)
    shown = rows[(page - 1) * PAGE: page * PAGE]
    return wb.render(request, "dataset.html", title=f"Dataset {version}", version=version, card=card, rows=shown,
                     total=total, q=q, split=split, origin=origin, origins=origins, page=page,
                     pages=max(1, -(-total // PAGE)), leakage=card.get("leakage") or {},
                     errors=card.get("errors") or [], dropped=card.get("dropped") or {},
                     pii=card.get("pii_counts") or {})
