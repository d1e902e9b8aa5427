"""Search: dense, sparse (BM25) or hybrid with weighted reciprocal rank fusion, then rerank and MMR.

The caller's access filter (and any `--where`) is ANDed into one filter that both the dense and the
BM25 query carry into the store, so every candidate list is already restricted to allowed chunks.

On a store with read views (LanceDB) a search runs on one pinned table version: both rankings return ids and
scores only, they are fused, and text and metadata are read for the results alone (re-checked against the
filter as they are read). Reading the 2 x 50 candidates' rows used to cost more than both rankings at 100k chunks.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError
from llmtailor.rag.acl import Caller, acl_filter
from llmtailor.rag.config import RagConfig, SearchConfig
from llmtailor.rag.filters import Filter, all_of, parse_where, to_sql
from llmtailor.rag.index import Index
from llmtailor.rag.rerank import Reranker, load_reranker
from llmtailor.rag.store import Hit, Ranked

MODES = ("dense", "sparse", "hybrid")


@dataclass
class SearchResult:
    """Hits plus how they were found (mode, rewritten queries, timings in milliseconds)."""

    query: str
    mode: str
    hits: list[Hit]
    queries: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    filter: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "queries": self.queries,
            "results": [dict(rank=i, **h.as_dict()) for i, h in enumerate(self.hits, start=1)],
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }


def rrf(rankings: list[tuple[list[Hit], float]], k: int = 60) -> list[Hit]:
    """Weighted reciprocal rank fusion: score(d) = sum over lists of weight / (k + rank of d)."""
    fused: dict[str, Hit] = {}
    scores: dict[str, float] = {}
    for hits, weight in rankings:
        if weight <= 0:
            continue
        for rank, h in enumerate(hits, start=1):
            cid = h.chunk.id
            scores[cid] = scores.get(cid, 0.0) + weight / (k + rank)
            seen = fused.get(cid)
            if seen is None:
                fused[cid] = Hit(h.chunk, 0.0, h.dense, h.sparse, h.rank_dense, h.rank_sparse)
            else:
                if h.dense is not None and (seen.dense is None or h.dense > seen.dense):
                    seen.dense, seen.rank_dense = h.dense, h.rank_dense
                if h.sparse is not None and (seen.sparse is None or h.sparse > seen.sparse):
                    seen.sparse, seen.rank_sparse = h.sparse, h.rank_sparse
    for cid, h in fused.items():
        h.score = scores[cid]
    return sorted(fused.values(), key=lambda h: (-h.score, h.chunk.id))


@dataclass
class _Fused:
    """A candidate during fusion on a read view: scores and ranks, no chunk yet."""

    id: str
    row: int | None
    score: float = 0.0
    dense: float | None = None
    sparse: float | None = None
    rank_dense: int | None = None
    rank_sparse: int | None = None

    def ranked(self) -> Ranked:
        return Ranked(self.id, self.score, self.row)


def _fuse_ranked(rankings: list[tuple[list[Ranked], float, str]], k: int, fuse: bool) -> list[_Fused]:
    """`rrf` on id rankings ('dense' or 'sparse' each): the same scores, ranks and order, without chunks."""
    fused: dict[str, _Fused] = {}
    for ranked, weight, kind in rankings:
        if fuse and weight <= 0:
            continue
        for rank, r in enumerate(ranked, start=1):
            f = fused.get(r.id)
            if f is None:
                f = fused[r.id] = _Fused(r.id, r.row)
            # Fused: the RRF sum. Not fused (one ranking, ids unique): the ranking's own score, as the store gave it.
            f.score = f.score + weight / (k + rank) if fuse else r.score
            if kind == "dense" and (f.dense is None or r.score > f.dense):
                f.dense, f.rank_dense = r.score, rank
            if kind == "sparse" and (f.sparse is None or r.score > f.sparse):
                f.sparse, f.rank_sparse = r.score, rank
    out = list(fused.values())
    if fuse:
        out.sort(key=lambda f: (-f.score, f.id))
    return out


def mmr(hits: list[Hit], vectors: dict[str, np.ndarray], query: np.ndarray, top_k: int, lam: float) -> list[Hit]:
    """Maximal marginal relevance: trade relevance to the query against similarity to what is already picked."""
    pool = [h for h in hits if h.chunk.id in vectors]
    if not pool:
        return hits[:top_k]
    mat = np.stack([vectors[h.chunk.id] for h in pool])
    rel = mat @ query
    chosen: list[int] = []
    best_sim = np.full(len(pool), -np.inf)
    while len(chosen) < min(top_k, len(pool)):
        penalty = np.where(np.isfinite(best_sim), best_sim, 0.0)
        score = lam * rel - (1 - lam) * penalty
        score[chosen] = -np.inf
        i = int(np.argmax(score))
        chosen.append(i)
        best_sim = np.maximum(best_sim, mat @ mat[i])
    return [pool[i] for i in chosen]


class Retriever:
    """Search one index. Construct once (loads the embedder lazily), call `search` per query."""

    def __init__(self, index: Index, cfg: SearchConfig | None = None, reranker: Reranker | None = None,
                 rewriter: Any = None, parallel: bool = True):
        self.index = index
        self.cfg = cfg or index.cfg.search
        self.reranker = reranker
        self.rewriter = rewriter
        self._pool = ThreadPoolExecutor(max_workers=2) if parallel else None

    @classmethod
    def open(cls, index_dir: str | Path, cfg: RagConfig | None = None, *, base_dir: Path | None = None,
             rewriter: Any = None) -> Retriever:
        """Open an index for search with the config's search settings and reranker."""
        cfg = cfg or RagConfig()
        index = Index.open(index_dir, cfg, base_dir=base_dir)
        reranker = load_reranker(cfg.search.reranker, base_dir)
        return cls(index, cfg.search, reranker, rewriter)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.index.close()

    def build_filter(self, caller: Caller, where: str | Filter | None) -> Filter:
        """ACL AND (where): a `--where` can only narrow what the caller may see."""
        extra = parse_where(where) if isinstance(where, str) or where is None else where
        flt = all_of(acl_filter(caller), extra)
        assert flt is not None
        return flt

    def search(
        self,
        query: str,
        *,
        caller: Caller | None = None,
        where: str | Filter | None = None,
        mode: str | None = None,
        top_k: int | None = None,
        use_mmr: bool | None = None,
        rewrite: bool | None = None,
        with_similarity: bool = False,
    ) -> SearchResult:
        """Top-k chunks the caller may see, best first."""
        t_start = time.perf_counter()
        cfg = self.cfg
        mode = mode or cfg.mode
        if mode not in MODES:
            raise TailorError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        top_k = top_k or cfg.top_k
        if top_k < 1:
            raise TailorError("top_k must be at least 1")
        if not query or not query.strip():
            raise TailorError("empty query")
        use_mmr = cfg.mmr if use_mmr is None else use_mmr
        rewrite = cfg.rewrite if rewrite is None else rewrite
        flt = self.build_filter(caller or Caller(), where)
        timings: dict[str, float] = {}
        queries = [query]
        if rewrite:
            if self.rewriter is None:
                raise TailorError("query rewriting needs an LLM: use `tailor rag ask` or pass a rewriter")
            t = time.perf_counter()
            queries += [q for q in self.rewriter(query) if q.strip() and q.strip() != query.strip()]
            timings["rewrite_ms"] = (time.perf_counter() - t) * 1000
        k = max(cfg.candidates, top_k)
        need_vec = mode != "sparse" or use_mmr or with_similarity
        t = time.perf_counter()
        qvecs = [self.index.embedder.embed_query(q) for q in queries] if need_vec else []
        timings["embed_ms"] = (time.perf_counter() - t) * 1000
        store = self.index.store
        if hasattr(store, "read_view"):
            hits = self._search_view(store, queries, qvecs, flt, mode, k, top_k, use_mmr, with_similarity, timings)
            timings["total_ms"] = (time.perf_counter() - t_start) * 1000
            return SearchResult(query, mode, hits, queries, timings, to_sql(flt))
        t = time.perf_counter()
        rankings: list[tuple[list[Hit], float]] = []
        for i, q in enumerate(queries):
            dense_job = sparse_job = None
            if mode in ("dense", "hybrid"):
                if self._pool is not None and mode == "hybrid":
                    dense_job = self._pool.submit(store.search_dense, qvecs[i], k, flt)
                else:
                    rankings.append((store.search_dense(qvecs[i], k, flt), cfg.dense_weight))
            if mode in ("sparse", "hybrid"):
                if dense_job is not None:
                    sparse_job = self._pool.submit(store.search_sparse, q, k, flt)
                else:
                    rankings.append((store.search_sparse(q, k, flt), cfg.sparse_weight))
            if dense_job is not None:
                rankings.append((dense_job.result(), cfg.dense_weight))
            if sparse_job is not None:
                rankings.append((sparse_job.result(), cfg.sparse_weight))
        timings["search_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        if mode == "hybrid" or len(rankings) > 1:
            hits = rrf(rankings, cfg.rrf_k)
        else:
            hits = rankings[0][0] if rankings else []
        if self.reranker is not None:
            hits = self.reranker.rerank(query, hits)
        if use_mmr or with_similarity:
            pool = hits[:k] if use_mmr else hits[:top_k]
            vecs = self.index.store.vectors([h.chunk.id for h in pool])
            if with_similarity and qvecs:
                for h in hits:
                    if h.chunk.id in vecs and h.dense is None:
                        h.dense = float(vecs[h.chunk.id] @ qvecs[0])
            hits = mmr(hits, vecs, qvecs[0], top_k, cfg.mmr_lambda) if use_mmr else hits[:top_k]
        else:
            hits = hits[:top_k]
        timings["fuse_ms"] = (time.perf_counter() - t) * 1000
        timings["total_ms"] = (time.perf_counter() - t_start) * 1000
        return SearchResult(query, mode, hits, queries, timings, to_sql(flt))

    def _search_view(self, store: Any, queries: list[str], qvecs: list[np.ndarray], flt: Filter, mode: str, k: int,
                     top_k: int, use_mmr: bool, with_similarity: bool, timings: dict[str, float]) -> list[Hit]:
        """Rank ids on one pinned version, fuse, then read the rows of the results only."""
        cfg = self.cfg
        t = time.perf_counter()
        view = store.read_view()
        legs_ms: dict[str, float] = {"dense_ms": 0.0, "sparse_ms": 0.0}

        def timed(kind: str, fn, *args) -> list[Ranked]:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                legs_ms[f"{kind}_ms"] += (time.perf_counter() - t0) * 1000

        rankings: list[tuple[list[Ranked], float, str]] = []
        for i, q in enumerate(queries):
            jobs: list[tuple[str, float, Any]] = []
            if mode in ("dense", "hybrid"):
                jobs.append(("dense", cfg.dense_weight, (view.dense, qvecs[i], k, flt)))
            if mode in ("sparse", "hybrid"):
                jobs.append(("sparse", cfg.sparse_weight, (view.sparse, q, k, flt)))
            if self._pool is not None and len(jobs) > 1 and not getattr(view, "in_memory", False):
                futures = [(kind, w, self._pool.submit(timed, kind, *job)) for kind, w, job in jobs[1:]]
                first = jobs[0]
                rankings.append((timed(first[0], *first[2]), first[1], first[0]))
                rankings += [(fut.result(), w, kind) for kind, w, fut in futures]
            else:
                rankings += [(timed(kind, *job), w, kind) for kind, w, job in jobs]
        timings["search_ms"] = (time.perf_counter() - t) * 1000
        timings.update(legs_ms)
        t = time.perf_counter()
        fused = _fuse_ranked(rankings, cfg.rrf_k, fuse=mode == "hybrid" or len(rankings) > 1)
        # Rows are read for what can reach the output: the top-k, or the pool a reranker (all) / MMR (k) re-orders.
        wanted = len(fused) if self.reranker is not None else k if use_mmr else top_k
        hits: list[Hit] = []
        start = 0
        while len(hits) < wanted and start < len(fused):
            batch = fused[start : start + wanted - len(hits)]
            start += len(batch)
            chunks = view.chunks([f.ranked() for f in batch], flt)
            for f in batch:
                c = chunks.get(f.id)
                if c is not None:  # never None unless the filter re-check dropped it (see lance_view.View.chunks)
                    hits.append(Hit(c, f.score, f.dense, f.sparse, f.rank_dense, f.rank_sparse))
        timings["fetch_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        if self.reranker is not None:
            hits = self.reranker.rerank(queries[0], hits)
        if use_mmr or with_similarity:
            pool = hits[:k] if use_mmr else hits[:top_k]
            rows = {f.id: f.row for f in fused}
            vecs = view.vectors([Ranked(h.chunk.id, 0.0, rows.get(h.chunk.id)) for h in pool])
            if with_similarity and qvecs:
                for h in hits:
                    if h.chunk.id in vecs and h.dense is None:
                        h.dense = float(vecs[h.chunk.id] @ qvecs[0])
            hits = mmr(hits, vecs, qvecs[0], top_k, cfg.mmr_lambda) if use_mmr else hits[:top_k]
        else:
            hits = hits[:top_k]
        timings["fuse_ms"] = (time.perf_counter() - t) * 1000
        return hits
