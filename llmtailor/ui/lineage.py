"""The lineage page's graph: the registry's edges plus the project's serving aliases, drawn as an inline SVG.

The registry knows datasets, runs (with their parent runs: `init_adapter`, merges), adapters, evaluations,
exports, index versions and deployments. Which adapter and index a RAG alias serves lives in the project file, so
those edges are added here. Every label goes through `escape`: ids and paths come from folders and configs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from llmtailor.registry.db import Registry
from llmtailor.registry.graph import Edge, Node, around, registry_graph

COL_W, ROW_H, BOX_W, BOX_H, PAD = 205, 70, 168, 50, 12
COLORS = {"dataset": "#e8f0fe", "run": "#fef7e0", "adapter": "#e6f4ea", "evaluation": "#f3e8fd",
          "export": "#fce8e6", "index": "#e0f7fa", "deployment": "#fff3cd", "alias": "#ede7f6"}


def _alias_adapter(reg: Registry, nodes: dict[str, Node], ref: str | None, base: Path) -> str | None:
    """The adapter node an alias's `adapter:` names: '@stage' (its current adapter), an id, a run id or a folder."""
    if not ref:
        return None
    if ref.startswith("@"):
        state = reg.current(ref[1:])
        return state.adapter_id if state else None
    for cand in (ref, f"ad-{ref}"):
        if nodes.get(cand, {}).get("kind") == "adapter":
            return cand
    folder = os.path.abspath(ref if Path(ref).is_absolute() else base / ref)
    for adapter in reg.adapters():
        if os.path.abspath(adapter["path"]) == folder:
            return str(adapter["id"])
    return None


def project_graph(reg: Registry, cfg: Any) -> tuple[dict[str, Node], list[Edge]]:
    """Registry nodes and edges, and one node per serving alias linked to its adapter and newest index version."""
    nodes, edges = registry_graph(reg)
    newest_index: dict[str, str] = {}
    for n in sorted((n for n in nodes.values() if n["kind"] == "index"), key=lambda n: str(n["created"] or "")):
        newest_index[os.path.abspath(n["path"])] = n["id"]  # later versions of the same folder replace earlier ones
    for name, alias in cfg.serve.aliases.items():
        aid = f"alias:{name}"
        src_adapter = _alias_adapter(reg, nodes, alias.adapter, cfg.base_dir)
        index = None
        if alias.index is not None:
            folder = os.path.abspath(alias.index if Path(alias.index).is_absolute() else cfg.base_dir / alias.index)
            index = newest_index.get(folder)
        if src_adapter is None and index is None:
            continue
        nodes[aid] = {"kind": "alias", "id": aid, "created": None,
                      "summary": f"serving alias {name}: adapter {alias.adapter or 'base model'}"
                                 f"{f', index {alias.index}' if alias.index else ''}"}
        if src_adapter:
            edges.append({"from": src_adapter, "to": aid, "label": "answers for"})
        if index:
            edges.append({"from": index, "to": aid, "label": "retrieved by"})
    return nodes, edges


def graph_for(reg: Registry, cfg: Any, ident: str) -> dict[str, Any]:
    """The item's ancestors and descendants (TailorError naming it when it is neither registered nor an alias)."""
    nodes, edges = project_graph(reg, cfg)
    return around(nodes, edges, ident)


def _short(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def svg(graph: dict[str, Any]) -> Markup:
    """Columns by layer (ancestors left, descendants right), one box per node, one arrow per edge."""
    pos: dict[str, tuple[int, int]] = {}
    rows: dict[int, int] = {}
    for n in graph["nodes"]:
        col = n["layer"]
        pos[n["id"]] = (PAD + col * COL_W, PAD + rows.get(col, 0) * ROW_H)
        rows[col] = rows.get(col, 0) + 1
    width = PAD * 2 + (max(rows) + 1) * COL_W if rows else 200
    height = PAD * 2 + max(rows.values(), default=1) * ROW_H
    parts = [f'<svg class="lineage-graph" id="lineage-svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="lineage graph">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#666"/></marker></defs>']
    for e in graph["edges"]:
        (x0, y0), (x1, y1) = pos[e["from"]], pos[e["to"]]
        ax, ay, bx, by = x0 + BOX_W, y0 + BOX_H // 2, x1, y1 + BOX_H // 2
        parts.append(f'<g class="edge" data-from="{escape(e["from"])}" data-to="{escape(e["to"])}">'
                     f'<line x1="{ax}" y1="{ay}" x2="{bx}" y2="{by}" stroke="#666" marker-end="url(#arrow)"/>'
                     f'<title>{escape(e["from"])} {escape(e["label"])} {escape(e["to"])}</title></g>')
    for n in graph["nodes"]:
        x, y = pos[n["id"]]
        stroke = ' stroke="#d62728" stroke-width="3"' if n["relation"] == "self" else ' stroke="#888"'
        fill = COLORS.get(n["kind"], "#f1f3f4")
        parts.append(f'<a href="/lineage?item={escape(n["id"])}"><g class="node kind-{escape(n["kind"])} '
                     f'rel-{n["relation"]}" data-id="{escape(n["id"])}">'
                     f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}"{stroke}/>'
                     f'<text x="{x + 8}" y="{y + 20}" font-size="12" font-weight="bold">{escape(n["kind"])}</text>'
                     f'<text x="{x + 8}" y="{y + 38}" font-size="11">{escape(_short(n["id"]))}</text>'
                     f'<title>{escape(n["id"])}: {escape(n["summary"])}</title></g></a>')
    parts.append("</svg>")
    return Markup("".join(parts))
