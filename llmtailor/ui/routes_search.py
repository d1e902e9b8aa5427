"""Retrieval: search an index as chosen callers (tenant, groups, level) side by side, with dense, sparse and fused
scores; and what each caller would NOT get, with the access rule that withholds it (ids only, never the text).

Searches go through the same `Retriever.search` (access filter inside the store query) as `tailor rag query` and
the server; the 'withheld' list comes from the same query run without the access filter.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from llmtailor.errors import TailorError
from llmtailor.rag.acl import Caller, level_name
from llmtailor.ui.app import UIError

router = APIRouter()
_open_lock = threading.Lock()


def index_dirs(cfg: Any) -> list[str]:
    """The project's index and every alias's, existing ones only."""
    found: list[str] = []
    cands: list[Path | None] = [cfg.rag.index_dir if cfg.rag else None]
    cands += [a.index for a in cfg.serve.aliases.values()]
    for p in cands:
        if p is not None:
            p = Path(p) if Path(p).is_absolute() else cfg.base_dir / p
            if (p.exists()) and str(p) not in found:
                found.append(str(p))
    return found


def _retriever(wb: Any, cfg: Any, index: str) -> Any:
    """One open Retriever per index for the workbench's life (closed with it)."""
    from llmtailor.rag.config import RagConfig
    from llmtailor.rag.search import Retriever

    with _open_lock:
        if index not in wb.retrievers:
            wb.retrievers[index] = Retriever.open(index, cfg.rag or RagConfig(), base_dir=cfg.base_dir)
        return wb.retrievers[index]


def why_hidden(caller: Caller, chunk: Any) -> str:
    """The first access rule the chunk fails for this caller."""
    if chunk.tenant != caller.tenant:
        return f"tenant {chunk.tenant or '(none)'} is not {caller.tenant or '(none)'}"
    if chunk.access_level > caller.level:
        return f"level {level_name(chunk.access_level)} is above {level_name(caller.level)}"
    return f"needs group {', '.join(chunk.groups)}"


def search_as(wb: Any, cfg: Any, index: str, query: str, mode: str, callers: list[Caller],
              top_k: int) -> list[dict[str, Any]]:
    ret = _retriever(wb, cfg, index)
    store = ret.index.store
    everything: dict[str, Any] = {}
    k = max(top_k * 3, 10)
    if mode != "sparse":
        for h in store.search_dense(ret.index.embedder.embed_query(query), k, None):
            everything.setdefault(h.chunk.id, h.chunk)
    if mode != "dense":
        for h in store.search_sparse(query, k, None):
            everything.setdefault(h.chunk.id, h.chunk)
    out = []
    for caller in callers:
        res = ret.search(query, caller=caller, mode=mode, top_k=top_k, use_mmr=False, with_similarity=True)
        seen = {h.chunk.id for h in res.hits}
        hidden = [{"id": cid, "source": Path(c.source).name, "reason": why_hidden(caller, c)}
                  for cid, c in everything.items() if cid not in seen and not _visible(caller, c)]
        out.append({"caller": caller, "level": level_name(caller.level), "hits": [h.as_dict() | {"text": h.chunk.text}
                                                                             for h in res.hits],
                    "hidden": hidden, "filter": res.filter, "ms": round(res.timings.get("total_ms", 0.0), 1)})
    return out


def _visible(caller: Caller, chunk: Any) -> bool:
    from llmtailor.rag.acl import can_see

    return can_see(caller, {"tenant": chunk.tenant, "access_level": chunk.access_level, "groups": chunk.groups})


@router.get("/retrieval", response_class=HTMLResponse)
async def retrieval_page(request: Request, q: str = "", index: str = "", mode: str = "hybrid", top_k: int = 5,
                         t1: str = "", g1: str = "", l1: str = "public", t2: str = "", g2: str = "",
                         l2: str = "public") -> HTMLResponse:
    wb = request.app.state.wb
    cfg = wb.config()
    indexes = index_dirs(cfg)
    results: list[dict[str, Any]] = []
    error = None
    index = index or (indexes[0] if indexes else "")  # a shared /retrieval?q=... link searches the first index
    if q:
        if index not in indexes:
            raise UIError(400, f"index: {index!r} is not one of this project's indexes")
        if mode not in ("dense", "sparse", "hybrid"):
            raise UIError(400, f"mode: use dense, sparse or hybrid, got {mode!r}")
        try:
            callers = [Caller.of(t1, g1, l1)] + ([Caller.of(t2, g2, l2)] if (t2 or g2) else [])
            results = await asyncio.to_thread(search_as, wb, cfg, index, q, mode, callers, max(1, min(top_k, 20)))
        except TailorError as e:
            error = str(e)
    return wb.render(request, "retrieval.html", title="Retrieval", indexes=indexes, results=results, error=error,
                     form={"q": q, "index": index or (indexes[0] if indexes else ""), "mode": mode, "top_k": top_k,
                           "t1": t1, "g1": g1, "l1": l1, "t2": t2, "g2": g2, "l2": l2})


@router.get("/api/passage")
async def passage(request: Request, model: str, id: str) -> dict[str, Any]:
    """The text of a passage a RAG alias cited (the server's citations carry its id, not its text)."""
    from llmtailor.rag.filters import Cmp

    cfg = request.app.state.wb.config()
    alias = cfg.serve.aliases.get(model)
    if alias is None or alias.index is None:
        raise UIError(404, f"{model!r} is not a RAG alias of this project")
    index = Path(alias.index) if Path(alias.index).is_absolute() else cfg.base_dir / alias.index
    ret = await asyncio.to_thread(_retriever, request.app.state.wb, cfg, str(index))
    found = await asyncio.to_thread(ret.index.store.fetch, Cmp("id", "=", id), 1)
    if not found:
        raise UIError(404, f"passage {id!r} is not in {index}")
    c = found[0]
    return {"id": c.id, "source": Path(c.source).name, "page": c.page or None, "text": c.text}
