"""Retrieval evaluation: hit rate@k, recall@k, MRR@10, nDCG@10 and latency, per search mode.

Two inputs: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), ingested into the index
as records, or a company's own JSONL of `{"question": ..., "relevant": ["path/to/file.pdf", ...]}`
evaluated against an index built with `tailor rag ingest`. Chunk hits are collapsed to documents
(first occurrence wins) before scoring, since relevance is judged per document.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import RowError, TailorError
from llmtailor.io import read_jsonl
from llmtailor.rag.acl import Caller, parse_groups, parse_level
from llmtailor.rag.config import RagConfig
from llmtailor.rag.ingest import Record, ingest_records
from llmtailor.rag.search import MODES, Retriever
from llmtailor.rag.store import Chunk

BEIR_PREFIX = "beir:"
DEFAULT_KS = (1, 3, 5, 10)


# ---------------------------------------------------------------- metrics


def hit_at_k(ranked: list[str], rels: dict[str, int], k: int) -> float:
    """1 if any relevant document is in the top k."""
    return 1.0 if any(rels.get(d, 0) > 0 for d in ranked[:k]) else 0.0


def recall_at_k(ranked: list[str], rels: dict[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k."""
    relevant = {d for d, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant & set(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant document within the top k (0 if none)."""
    for i, d in enumerate(ranked[:k], start=1):
        if rels.get(d, 0) > 0:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    """Normalised DCG with graded gain 2^rel - 1 (the BEIR / trec_eval convention)."""
    dcg = sum((2 ** rels.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum((2**r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


# ---------------------------------------------------------------- inputs


@dataclass
class EvalQuery:
    """One question, its graded relevant documents, and who asks it."""

    id: str
    text: str
    rels: dict[str, int]
    caller: Caller = field(default_factory=Caller)


def load_beir(folder: str | Path, split: str = "test") -> tuple[list[Record], list[EvalQuery]]:
    """Corpus records and judged queries of a BEIR folder (queries without judgements are left out)."""
    folder = Path(folder)
    corpus_path, queries_path, qrels_path = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / (
        f"{split}.tsv")
    for p in (corpus_path, queries_path, qrels_path):
        if not p.exists():
            raise TailorError(f"{p}: missing; a BEIR folder has corpus.jsonl, queries.jsonl and qrels/{split}.tsv")
    records = []
    for line, row in read_jsonl(corpus_path):
        if "_id" not in row:
            raise RowError(corpus_path, line, "_id", "missing")
        records.append(Record(id=str(row["_id"]), text=str(row.get("text") or ""), title=str(row.get("title") or "")))
    texts = {}
    for line, row in read_jsonl(queries_path):
        if "_id" not in row or "text" not in row:
            raise RowError(queries_path, line, "_id/text", "missing")
        texts[str(row["_id"])] = str(row["text"])
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            parts = raw.strip().split("\t") if "\t" in raw else raw.split()
            if not parts or (n == 1 and not parts[-1].lstrip("-").isdigit()):
                continue  # header
            if len(parts) != 3:
                raise RowError(qrels_path, n, None, "expected 'query-id corpus-id score'")
            qid, did, score = parts
            qrels.setdefault(qid, {})[did] = int(score)
    queries = [EvalQuery(q, texts[q], rels) for q, rels in qrels.items() if q in texts]
    if not queries:
        raise TailorError(f"{qrels_path}: no judged query matches queries.jsonl")
    return records, queries


def load_questions(path: str | Path) -> list[EvalQuery]:
    """A company's own set: JSONL rows {"question", "relevant": [sources], optional tenant/groups/access_level}."""
    out = []
    for line, row in read_jsonl(path):
        q = row.get("question")
        rel = row.get("relevant")
        if not isinstance(q, str) or not q.strip():
            raise RowError(path, line, "question", "missing or empty")
        if isinstance(rel, str):
            rel = [rel]
        if not isinstance(rel, list) or not rel or not all(isinstance(r, str) for r in rel):
            raise RowError(path, line, "relevant", "must be a non-empty list of source paths")
        try:
            caller = Caller(str(row.get("tenant") or ""), parse_groups(row.get("groups")),
                            parse_level(row.get("access_level")))
        except TailorError as e:
            raise RowError(path, line, "access_level", str(e)) from None
        out.append(EvalQuery(str(row.get("id", line)), q, {r: 1 for r in rel}, caller))
    if not out:
        raise TailorError(f"{path}: no questions")
    return out


# ---------------------------------------------------------------- running


def _doc_ranking(hits: list[Any], doc_of: Callable[[Chunk], str], k: int) -> list[str]:
    out: list[str] = []
    for h in hits:
        d = doc_of(h.chunk)
        if d not in out:
            out.append(d)
            if len(out) >= k:
                break
    return out


def evaluate(
    retriever: Retriever,
    queries: list[EvalQuery],
    *,
    modes: Iterable[str] = MODES,
    ks: Iterable[int] = DEFAULT_KS,
    doc_of: Callable[[Chunk], str] = lambda c: c.source,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Metrics per mode; latency is the whole search call, with the query-embedding part reported apart."""
    ks = sorted(set(ks) | {10})
    depth = max(ks)
    results: dict[str, Any] = {}
    for mode in modes:
        if mode not in MODES:
            raise TailorError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
        sums: dict[str, float] = {}
        lat, emb = [], []
        # Fetch more chunks than documents needed: several chunks may come from one document.
        for n, q in enumerate(queries, start=1):
            t = time.perf_counter()
            res = retriever.search(q.text, caller=q.caller, mode=mode, top_k=depth * 3)
            lat.append((time.perf_counter() - t) * 1000)
            emb.append(res.timings.get("embed_ms", 0.0))
            ranked = _doc_ranking(res.hits, doc_of, depth)
            for k in ks:
                sums[f"hit_rate@{k}"] = sums.get(f"hit_rate@{k}", 0.0) + hit_at_k(ranked, q.rels, k)
                sums[f"recall@{k}"] = sums.get(f"recall@{k}", 0.0) + recall_at_k(ranked, q.rels, k)
            sums["mrr@10"] = sums.get("mrr@10", 0.0) + mrr_at_k(ranked, q.rels, 10)
            sums["ndcg@10"] = sums.get("ndcg@10", 0.0) + ndcg_at_k(ranked, q.rels, 10)
            if progress:
                progress(mode, n, len(queries))
        metrics = {name: round(v / len(queries), 4) for name, v in sums.items()}
        metrics["latency_ms"] = {
            "p50": round(percentile(lat, 50), 2), "p95": round(percentile(lat, 95), 2),
            "embed_p50": round(percentile(emb, 50), 2), "embed_p95": round(percentile(emb, 95), 2),
        }
        metrics["queries"] = len(queries)
        results[mode] = metrics
    return results


def run_beir(
    folder: str | Path,
    index_dir: str | Path,
    cfg: RagConfig | None = None,
    *,
    modes: Iterable[str] = MODES,
    ks: Iterable[int] = DEFAULT_KS,
    limit: int | None = None,
    split: str = "test",
    embedder: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Ingest the BEIR corpus into `index_dir` (incremental) and evaluate every mode on its judged queries."""
    cfg = cfg or RagConfig()
    records, queries = load_beir(folder, split)
    if limit:
        queries = queries[:limit]
    report = ingest_records(records, index_dir, cfg, prefix=BEIR_PREFIX, embedder=embedder, progress=progress)
    retriever = Retriever(_open(index_dir, cfg, embedder), cfg.search)
    try:
        results = evaluate(retriever, queries, modes=modes, ks=ks, doc_of=lambda c: c.source[len(BEIR_PREFIX):],
                           progress=progress)
    finally:
        retriever.close()
    return {"dataset": str(folder), "split": split, "documents": len(records), "queries": len(queries),
            "chunks": report.chunks_total, "ingest": report.as_dict(), "modes": results}


def run_questions(
    path: str | Path,
    index_dir: str | Path,
    cfg: RagConfig | None = None,
    *,
    modes: Iterable[str] = MODES,
    ks: Iterable[int] = DEFAULT_KS,
    embedder: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate an ingested index on the project's own question -> relevant-source list."""
    cfg = cfg or RagConfig()
    queries = load_questions(path)
    index = _open(index_dir, cfg, embedder)
    sources = list(index.store.source_states())
    unmatched: list[str] = []
    for q in queries:
        mapped: dict[str, int] = {}
        for rel in q.rels:
            hits = _match_source(rel, sources)
            if not hits:
                unmatched.append(rel)
            for s in hits:
                mapped[s] = 1
        q.rels = mapped
    retriever = Retriever(index, cfg.search)
    try:
        results = evaluate(retriever, queries, modes=modes, ks=ks, progress=progress)
    finally:
        retriever.close()
    return {"questions": str(path), "queries": len(queries), "unmatched_relevant": sorted(set(unmatched)),
            "modes": results}


def _match_source(rel: str, sources: list[str]) -> list[str]:
    """Indexed sources a relevant entry names: the same path, or a path ending with it."""
    norm = rel.replace("\\", "/").lstrip("./")
    return [s for s in sources if s == rel or s.replace("\\", "/").endswith("/" + norm)]


def _open(index_dir: str | Path, cfg: RagConfig, embedder: Any):
    from llmtailor.rag.index import Index

    return Index.open(index_dir, cfg, embedder=embedder)
