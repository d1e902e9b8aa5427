"""The lineage graph: every edge the registry records, and the part of it around one item.

`Registry.lineage` follows one straight chain (dataset -> run -> adapter -> evaluations -> deployments). Real
projects branch: a DPO run starts from an SFT adapter (`train.init_adapter`, recorded as the run's `parents`), a
merge has several parents, an export hangs off its adapter, an index folder has versions. This module reads every
registry row once and returns nodes and edges, so a caller can show the ancestors and descendants of any item.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sqlalchemy import select

from llmtailor.errors import TailorError
from llmtailor.registry.db import (
    Adapter,
    Dataset,
    Deployment,
    Evaluation,
    Export,
    IndexVersion,
    Registry,
    Run,
    _lineage_item,
)

Node = dict[str, Any]
Edge = dict[str, str]


def _edge(src: str, dst: str, label: str) -> Edge:
    return {"from": src, "to": dst, "label": label}


def registry_graph(reg: Registry) -> tuple[dict[str, Node], list[Edge]]:
    """Every registry item as a node (id, kind, created, summary) and every recorded link between them."""
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    with reg.session() as s:
        for kind, table in (("dataset", Dataset), ("run", Run), ("adapter", Adapter), ("evaluation", Evaluation),
                            ("export", Export), ("index", IndexVersion), ("deployment", Deployment)):
            for row in s.scalars(select(table)):
                item = _lineage_item(kind, row)
                nodes[item["id"]] = item | {"path": getattr(row, "path", None)}
        runs = list(s.scalars(select(Run)))
        adapters = list(s.scalars(select(Adapter)))
        by_run = {a.run_id: a.id for a in adapters if a.run_id}
        for run in runs:
            if run.dataset_id:
                edges.append(_edge(run.dataset_id, run.id, "trained on"))
            metrics = run.metrics or {}
            merged = metrics.get("objective") == "merge" or "merge" in metrics
            for parent in metrics.get("parents") or []:
                src = by_run.get(parent) or (parent if parent in nodes else None)
                if src is None:  # a parent adapter folder that was never a registered run
                    src = f"folder:{parent}"
                    nodes.setdefault(src, {"kind": "adapter folder", "id": src, "created": None,
                                           "summary": str(parent)})
                label = "merged into" if merged else f"init_adapter of {metrics.get('objective') or run.method}"
                edges.append(_edge(src, run.id, label))
        for a in adapters:
            if a.run_id:
                edges.append(_edge(a.run_id, a.id, "produced"))
        for ev in s.scalars(select(Evaluation)):
            src = ev.adapter_id or ev.run_id
            if src:
                edges.append(_edge(src, f"ev-{ev.id}", "evaluated"))
        for ex in s.scalars(select(Export)):
            src = ex.adapter_id or ex.run_id
            if src:
                edges.append(_edge(src, ex.id, f"exported as {ex.format}"))
        for dep in s.scalars(select(Deployment)):
            for aid, label in ((dep.adapter_id, "rolled back to" if dep.action == "rollback" else "serves"),
                               (dep.canary_adapter_id, f"canary {dep.canary_percent:g}%"),
                               (dep.shadow_adapter_id, "shadow")):
                if aid:
                    edges.append(_edge(aid, f"dep-{dep.id}", f"{label} in {dep.stage}"))
        versions: dict[str, list[IndexVersion]] = {}
        for ix in s.scalars(select(IndexVersion).order_by(IndexVersion.created, IndexVersion.id)):
            versions.setdefault(ix.path, []).append(ix)
        for chain in versions.values():
            edges.extend(_edge(a.id, b.id, "rebuilt as") for a, b in zip(chain, chain[1:], strict=False))
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for e in edges:
        key = (e["from"], e["to"], e["label"])
        if key not in seen and e["from"] in nodes and e["to"] in nodes:
            seen.add(key)
            unique.append(e)
    return nodes, unique


def around(nodes: dict[str, Node], edges: list[Edge], root: str) -> dict[str, Any]:
    """The root with all its ancestors and descendants, every edge among them, and a column (`layer`) for each
    node: the longest path to it from the leftmost ancestor, so every edge points rightwards."""
    if root not in nodes:
        raise TailorError(f"{root!r} is not in the registry (see `tailor registry ls`)")
    out_edges: dict[str, list[str]] = {}
    in_edges: dict[str, list[str]] = {}
    for e in edges:
        out_edges.setdefault(e["from"], []).append(e["to"])
        in_edges.setdefault(e["to"], []).append(e["from"])

    def reach(links: dict[str, list[str]]) -> set[str]:
        found: set[str] = set()
        todo = deque([root])
        while todo:
            for nxt in links.get(todo.popleft(), []):
                if nxt not in found and nxt != root:
                    found.add(nxt)
                    todo.append(nxt)
        return found

    ancestors, descendants = reach(in_edges), reach(out_edges)
    keep = {root} | ancestors | descendants
    sub = [e for e in edges if e["from"] in keep and e["to"] in keep
           and not (e["from"] in descendants and e["to"] in ancestors)]
    layer = {n: 0 for n in keep}
    for _ in range(len(keep)):  # longest-path layering; a cycle (never recorded) stops after len(keep) passes
        changed = False
        for e in sub:
            if layer[e["to"]] < layer[e["from"]] + 1:
                layer[e["to"]] = layer[e["from"]] + 1
                changed = True
        if not changed:
            break
    relation = {n: "ancestor" for n in ancestors} | {n: "descendant" for n in descendants} | {root: "self"}
    ordered = sorted(keep, key=lambda n: (layer[n], str(nodes[n].get("created") or ""), n))
    return {"root": root,
            "nodes": [nodes[n] | {"relation": relation[n], "layer": layer[n]} for n in ordered],
            "edges": sub}


def lineage_graph(reg: Registry, ident: str) -> dict[str, Any]:
    """Ancestors and descendants of one registry item, following every recorded edge."""
    nodes, edges = registry_graph(reg)
    return around(nodes, edges, ident)
