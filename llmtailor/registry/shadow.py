"""Shadow vs user answers from the request log: how often the candidate agrees, and how fast each side was.

The server logs every shadow answer as its own request row pointing at the user's row (`shadow_of`), so the
comparison is a join; answers are only there when `serve.log_content` is on, latency and status always are.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any


def _same(a: str | None, b: str | None) -> bool | None:
    """Exact match after trimming whitespace; None when either answer was not logged."""
    if a is None or b is None:
        return None
    return a.strip() == b.strip()


def _latency(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean_ms": None, "p50_ms": None}
    return {"mean_ms": round(statistics.fmean(values), 1), "p50_ms": round(statistics.median(values), 1)}


def _pair_row(user: dict[str, Any], shadow: dict[str, Any]) -> dict[str, Any]:
    ok = user["status"] == 200 and shadow["status"] == 200
    return {"request_id": user["id"], "created": user["created"], "stage": shadow["stage"], "model": user["model"],
            "prompt": user["prompt"], "user_adapter": user["adapter_id"], "user_answer": user["answer"],
            "user_latency_ms": user["latency_ms"], "shadow_adapter": shadow["adapter_id"],
            "shadow_answer": shadow["answer"], "shadow_latency_ms": shadow["latency_ms"],
            "shadow_status": shadow["status"], "same": _same(user["answer"], shadow["answer"]) if ok else None}


def _summary(adapter: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r["same"] for r in rows if r["same"] is not None]
    served = [r for r in rows if r["shadow_status"] == 200]
    return {"shadow_adapter": adapter, "requests": len(rows), "compared": len(judged),
            "agreement": round(sum(judged) / len(judged), 4) if judged else None,
            "shadow_errors": len(rows) - len(served),
            "user_latency": _latency([r["user_latency_ms"] for r in rows]),
            "shadow_latency": _latency([r["shadow_latency_ms"] for r in served])}


def shadow_report(registry: Any, *, stage: str | None = "production", since: dt.datetime | None = None,
                  limit: int | None = None) -> dict[str, Any]:
    """Per shadow adapter: agreement (exact-match share) and latency of both sides; plus the newest pairs."""
    rows = [_pair_row(p["user"], p["shadow"]) for p in registry.shadow_pairs(stage=stage, since=since)]
    by_adapter: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_adapter.setdefault(r["shadow_adapter"] or "?", []).append(r)
    shown = rows[-limit:] if limit else rows
    return {"stage": stage, "summaries": [_summary(a, rs) for a, rs in by_adapter.items()], "pairs": shown,
            "content_logged": any(r["user_answer"] is not None for r in rows)}
