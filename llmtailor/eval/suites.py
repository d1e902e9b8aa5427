"""Helpers shared by the shipped suites (regression, red-team)."""

from __future__ import annotations


def spread_across_categories(items: list[dict], limit: int) -> list[dict]:
    """The first `limit` items taken round-robin over categories, so a short run still covers every category."""
    if not limit or limit >= len(items):
        return items
    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(it["category"], []).append(it)
    picked: list[dict] = []
    depth = 0
    while len(picked) < limit:
        for cat in by_cat:
            if depth < len(by_cat[cat]) and len(picked) < limit:
                picked.append(by_cat[cat][depth])
        depth += 1
    return picked
