"""Reciprocal rank fusion, MMR, and the retrieval metrics (checked against hand computations)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmtailor.rag.retrieval_eval import hit_at_k, mrr_at_k, ndcg_at_k, percentile, recall_at_k
from llmtailor.rag.search import mmr, rrf
from llmtailor.rag.store import Chunk, Hit


def hits(ids: list[str], kind: str = "dense") -> list[Hit]:
    out = []
    for r, i in enumerate(ids, start=1):
        h = Hit(Chunk(id=i, source="s", text=i), score=1.0 / r)
        if kind == "dense":
            h.dense, h.rank_dense = 1.0 - r / 10, r
        else:
            h.sparse, h.rank_sparse = 10.0 - r, r
        out.append(h)
    return out


def test_rrf_scores_are_weighted_reciprocal_ranks():
    fused = rrf([(hits(["a", "b", "c"]), 1.0), (hits(["c", "a", "d"], "sparse"), 1.0)], k=60)
    scores = {h.chunk.id: h.score for h in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["d"] == pytest.approx(1 / 63)
    assert [h.chunk.id for h in fused] == ["a", "c", "b", "d"]
    a = next(h for h in fused if h.chunk.id == "a")
    assert (a.rank_dense, a.rank_sparse) == (1, 2) and a.dense is not None and a.sparse is not None


def test_rrf_weights_and_k_change_the_order():
    dense, sparse = hits(["a", "b"]), hits(["b", "a"], "sparse")
    assert [h.chunk.id for h in rrf([(dense, 2.0), (sparse, 1.0)])] == ["a", "b"]
    assert [h.chunk.id for h in rrf([(dense, 1.0), (sparse, 2.0)])] == ["b", "a"]
    assert [h.chunk.id for h in rrf([(dense, 0.0), (sparse, 1.0)])] == ["b", "a"]  # weight 0 = ignored
    small_k = {h.chunk.id: h.score for h in rrf([(dense, 1.0)], k=1)}
    assert small_k["a"] == pytest.approx(0.5)


def test_mmr_prefers_diverse_results():
    q = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    v = {
        "a": np.array([0.9, 0.43, 0.0]),
        "a2": np.array([0.89, 0.45, 0.0]),  # near-duplicate of a
        "b": np.array([0.8, 0.0, 0.6]),
    }
    vecs = {k: (x / np.linalg.norm(x)).astype(np.float32) for k, x in v.items()}
    cand = hits(["a", "a2", "b"])
    assert [h.chunk.id for h in mmr(cand, vecs, q, 2, 1.0)] == ["a", "a2"]  # relevance only
    assert [h.chunk.id for h in mmr(cand, vecs, q, 2, 0.5)] == ["a", "b"]  # diversity kicks the duplicate out
    assert len(mmr(cand, vecs, q, 10, 0.5)) == 3


def test_metrics_by_hand():
    ranked = ["d1", "d2", "d3", "d4"]
    rels = {"d2": 2, "d4": 1, "d9": 3}
    assert hit_at_k(ranked, rels, 1) == 0.0 and hit_at_k(ranked, rels, 2) == 1.0
    assert recall_at_k(ranked, rels, 4) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, rels, 10) == 0.5 and mrr_at_k(ranked, rels, 1) == 0.0
    dcg = 3 / math.log2(3) + 1 / math.log2(5)
    idcg = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, rels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["d9", "d2", "d4"], rels, 10) == pytest.approx(1.0)
    assert ndcg_at_k(ranked, {}, 10) == 0.0 and recall_at_k(ranked, {}, 3) == 0.0
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([], 95) == 0.0
