"""`tailor monitor`: is production traffic still what the production adapter was trained on?

Reads the registry's request log (prompts are kept when `serve.log_content` is on) and feedback, embeds the
production queries and the training questions of the production adapter's dataset with the RAG embedder
(the packaged MiniLM by default), and reports the distance between the two samples (centroid cosine
distance, RBF-kernel MMD), the topic mix (k-means clusters of the training questions, total variation between
the mixes), the share of queries unlike any training example, feedback and guardrail rates. Crossing a
threshold from `serve.monitor` says "retrain"; `export_dataset` then turns thumbs-up conversations into chat
rows and a new dataset version through the same `prepare` stage as any other data.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError


def training_questions(path: Path) -> list[str]:
    """User turns of a dataset version folder (train.jsonl) or of a chat JSONL file."""
    from llmtailor.io import read_jsonl

    file = path / "train.jsonl" if path.is_dir() else path
    if not file.exists():
        raise TailorError(f"{file}: training data not found")
    out = []
    for _, row in read_jsonl(file):
        for m in row.get("messages") or []:
            if m.get("role") == "user" and m.get("content"):
                out.append(str(m["content"]))
        if row.get("instruction"):
            out.append(str(row["instruction"]) + (("\n" + str(row["input"])) if row.get("input") else ""))
    return out


def production_dataset(registry: Any) -> tuple[str | None, Path | None]:
    """(adapter id, dataset folder) of what is deployed to production, via the lineage tables."""
    from llmtailor.registry.db import Adapter, Dataset, Run

    dep = registry.current("production")
    if dep is None or dep.adapter_id is None:
        return None, None
    with registry.session() as s:
        ad = s.get(Adapter, dep.adapter_id)
        run = s.get(Run, ad.run_id) if ad is not None and ad.run_id else None
        ds = s.get(Dataset, run.dataset_id) if run is not None and run.dataset_id else None
        return dep.adapter_id, Path(ds.path) if ds is not None and ds.path else None


def _kmeans(x: np.ndarray, k: int, iters: int = 20) -> np.ndarray:
    """Centroids by k-means with farthest-point initialisation (deterministic: no random restarts needed)."""
    centers = [x[0]]
    for _ in range(1, k):
        d = np.min(1 - x @ np.stack(centers).T, axis=1)
        centers.append(x[int(np.argmax(d))])
    c = np.stack(centers)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(k)])
        new /= np.linalg.norm(new, axis=1, keepdims=True) + 1e-12
        if np.allclose(new, c):
            break
        c = new
    return c


def _mmd(a: np.ndarray, b: np.ndarray) -> float:
    """Maximum mean discrepancy with an RBF kernel, bandwidth by the median heuristic."""
    both = np.concatenate([a, b])
    sq = np.maximum(2 - 2 * both @ both.T, 0)  # squared distances of unit vectors
    med = float(np.median(sq[np.triu_indices(len(both), 1)])) if len(both) > 1 else 1.0
    k = np.exp(-sq / (med or 1.0))
    n = len(a)
    value = k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
    return float(np.sqrt(max(value, 0.0)))


def drift(queries: list[str], train: list[str], embedder: Any, *, novel_similarity: float = 0.5,
          topics: int = 6) -> dict[str, Any]:
    """Distances between production queries and training questions (both embedded, unit length)."""
    q = np.asarray(embedder.embed(queries), dtype=np.float64)
    t = np.asarray(embedder.embed(train), dtype=np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-12
    t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-12
    cq, ct = q.mean(0), t.mean(0)
    centroid = 1 - float(cq @ ct / (np.linalg.norm(cq) * np.linalg.norm(ct) + 1e-12))
    nearest = (q @ t.T).max(axis=1)
    k = max(1, min(topics, len(t) // 3 or 1))
    centers = _kmeans(t, k)
    at, aq = np.argmax(t @ centers.T, axis=1), np.argmax(q @ centers.T, axis=1)
    pt, pq = np.bincount(at, minlength=k) / len(t), np.bincount(aq, minlength=k) / len(q)
    table = []
    for j in range(k):
        members = np.where(at == j)[0]
        central = members[int(np.argmax(t[members] @ centers[j]))] if len(members) else None
        table.append({"topic": j, "example": train[central][:80] if central is not None else "",
                      "train_share": round(float(pt[j]), 3), "production_share": round(float(pq[j]), 3),
                      "shift": round(float(pq[j] - pt[j]), 3)})
    table.sort(key=lambda r: -abs(r["shift"]))
    novel = [queries[i] for i in np.argsort(nearest) if nearest[i] < novel_similarity]
    return {"queries": len(queries), "train_rows": len(train), "centroid_distance": round(centroid, 4),
            "mmd": round(_mmd(q, t), 4), "topic_shift": round(0.5 * float(np.abs(pq - pt).sum()), 4),
            "novel_share": round(len(novel) / len(queries), 4), "novel_examples": novel[:5], "topics": table}


def monitor(registry: Any, cfg: Any, *, model: str | None = None, since: dt.datetime | None = None,
            dataset: Path | None = None, embedder: Any = None) -> dict[str, Any]:
    """The monitoring report: traffic, feedback, guardrails, drift, and which retraining thresholds were crossed."""
    th = cfg.serve.monitor
    rows = registry.requests(model=model, since=since)
    served = [r for r in rows if r["status"] == 200]
    ids = {r["id"] for r in rows}
    fb = [f for f in registry.feedback() if f["request_id"] in ids]
    down = sum(f["rating"] == "down" for f in fb)
    hits: dict[str, int] = {}
    hit_requests = 0
    for r in rows:
        if r.get("guardrails"):
            hit_requests += 1
            for h in r["guardrails"]:
                hits[h.get("check", "?")] = hits.get(h.get("check", "?"), 0) + 1
    report: dict[str, Any] = {
        "requests": len(rows), "served": len(served), "models": sorted({r["model"] for r in rows}),
        "feedback": {"rated": len(fb), "up": len(fb) - down, "down": down,
                     "rate": round(len(fb) / len(rows), 4) if rows else 0.0,
                     "down_rate": round(down / len(fb), 4) if fb else 0.0},
        "guardrails": {"hits": hits, "requests_with_hits": hit_requests,
                       "rate": round(hit_requests / len(rows), 4) if rows else 0.0},
    }
    adapter_id, ds_path = production_dataset(registry)
    ds_path = dataset or ds_path
    report["production_adapter"], report["dataset"] = adapter_id, str(ds_path) if ds_path else None
    queries = [r["prompt"] for r in served if r.get("prompt")]
    triggers: list[str] = []
    if ds_path is None:
        report["drift"] = {"skipped": "no production deployment with a registered dataset (pass --dataset)"}
    elif len(queries) < th.min_queries:
        report["drift"] = {"skipped": f"{len(queries)} logged queries with content (< min_queries {th.min_queries}; "
                                      "serve.log_content must be on)"}
    else:
        train = training_questions(ds_path)
        if not train:
            raise TailorError(f"{ds_path}: no user turns to compare with")
        rng = np.random.default_rng(0)
        if len(queries) > th.sample:
            queries = [queries[i] for i in sorted(rng.choice(len(queries), th.sample, replace=False))]
        if len(train) > th.sample:
            train = [train[i] for i in sorted(rng.choice(len(train), th.sample, replace=False))]
        if embedder is None:
            from llmtailor.rag.embed import load_embedder

            embedder = load_embedder(cfg.rag.embedding if cfg.rag is not None else None, cfg.base_dir)
        d = drift(queries, train, embedder, novel_similarity=th.novel_similarity)
        d["embedder"] = getattr(embedder, "name", type(embedder).__name__)
        report["drift"] = d
        for name, value, limit in (("centroid_distance", d["centroid_distance"], th.max_centroid_distance),
                                   ("mmd", d["mmd"], th.max_mmd), ("topic_shift", d["topic_shift"], th.max_topic_shift),
                                   ("novel_share", d["novel_share"], th.max_novel_share)):
            if value > limit:
                triggers.append(f"drift {name} {value:g} > {limit:g}")
    if report["feedback"]["rated"] and report["feedback"]["down_rate"] > th.max_thumbs_down_rate:
        triggers.append(f"thumbs-down rate {report['feedback']['down_rate']:g} > {th.max_thumbs_down_rate:g}")
    if rows and report["guardrails"]["rate"] > th.max_guardrail_hit_rate:
        triggers.append(f"guardrail hit rate {report['guardrails']['rate']:g} > {th.max_guardrail_hit_rate:g}")
    report["triggers"] = triggers
    report["retrain"] = bool(triggers)
    return report


def reviewed_conversations(registry: Any, model: str | None = None) -> list[dict[str, Any]]:
    """Chat rows from answers rated up (and never down), with the logged prompt and answer."""
    ratings: dict[str, set[str]] = {}
    for f in registry.feedback():
        ratings.setdefault(f["request_id"], set()).add(f["rating"])
    good = {rid for rid, r in ratings.items() if r == {"up"}}
    rows = []
    for r in registry.requests(model=model):
        if r["id"] in good and r["status"] == 200 and r.get("prompt") and r.get("answer"):
            rows.append({"messages": [{"role": "user", "content": r["prompt"]},
                                      {"role": "assistant", "content": r["answer"]}],
                         "meta": {"request_id": r["id"], "model": r["model"], "source": "production-feedback"}})
    return rows


def export_dataset(registry: Any, cfg: Any, tokenizer: Any, *, model: str | None = None,
                   with_training_sources: bool = True) -> dict[str, Any]:
    """Write thumbs-up conversations to feedback/<time>.jsonl and prepare a new dataset version from them."""
    from llmtailor.data.config import SourceConfig
    from llmtailor.data.prepare import prepare
    from llmtailor.io import write_jsonl

    rows = reviewed_conversations(registry, model)
    if not rows:
        raise TailorError("no reviewed conversations to export: none rated up with logged content "
                          "(serve.log_content must be on and users must send POST /v1/feedback)")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = cfg.base_dir / "feedback" / f"feedback-{stamp}.jsonl"
    write_jsonl(out, [{"messages": r["messages"]} for r in rows])
    sources = list(cfg.data.sources) if with_training_sources else []
    sources.append(SourceConfig(path=out, format="chat", name="production-feedback"))
    data_cfg = cfg.data.model_copy(update={"sources": sources})
    version = prepare(data_cfg, tokenizer, show_progress=False)
    ds_id = None
    try:
        ds_id = registry.record_dataset(version.hash, version.path, version.card)
    except TailorError:
        pass  # the dataset exists on disk; `tailor registry sync` can record it later
    return {"exported": len(rows), "file": str(out), "dataset": version.hash, "path": str(version.path),
            "registry_id": ds_id, "reused": version.reused,
            "rows": {k: version.card.get(k) for k in ("train_rows", "eval_rows") if k in version.card}}


def render(report: dict[str, Any]) -> str:
    """A plain-text summary for the terminal."""
    lines = [f"requests {report['requests']} (served {report['served']}); production adapter "
             f"{report['production_adapter'] or '-'}; dataset {report['dataset'] or '-'}"]
    fb, g = report["feedback"], report["guardrails"]
    lines.append(f"feedback: {fb['rated']} rated ({fb['rate']:.0%} of requests), {fb['down']} down "
                 f"({fb['down_rate']:.0%})")
    lines.append(f"guardrails: {g['requests_with_hits']} requests with hits ({g['rate']:.0%}) "
                 + json.dumps(g["hits"]))
    d = report["drift"]
    if "skipped" in d:
        lines.append(f"drift: skipped ({d['skipped']})")
    else:
        lines.append(f"drift ({d['queries']} queries vs {d['train_rows']} training rows, {d['embedder']}): centroid "
                     f"distance {d['centroid_distance']}, MMD {d['mmd']}, topic shift {d['topic_shift']}, novel "
                     f"{d['novel_share']:.0%}")
        for t in d["topics"][:5]:
            lines.append(f"  topic {t['topic']}: train {t['train_share']:.0%} -> production "
                         f"{t['production_share']:.0%}  e.g. {t['example']!r}")
        for ex in d["novel_examples"][:3]:
            lines.append(f"  novel: {ex[:100]!r}")
    crossed = "RETRAIN: " + "; ".join(report["triggers"])
    lines.append(crossed if report["retrain"] else "no retraining threshold crossed")
    return "\n".join(lines)
