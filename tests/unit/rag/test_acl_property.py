"""Property: over a multi-tenant index with random ACLs, 1,000+ random queries never return a chunk the caller
may not see, never return fewer than they should, and a tenant without documents always gets nothing."""

from __future__ import annotations

import random

import pytest

from llmtailor.rag.acl import Caller, can_see
from llmtailor.rag.filters import matches, parse_where
from llmtailor.rag.index import Index
from llmtailor.rag.ingest import Record, ingest_records
from llmtailor.rag.search import Retriever
from tests.unit.rag.conftest import CountingEmbedder, rag_config

WORDS = ("refund invoice payroll holiday leave contract vendor security password laptop travel expense budget "
         "audit privacy retention backup incident onboarding salary pension insurance").split()
TENANTS = ["acme", "globex", "initech", ""]
GROUPS = ["hr", "eng", "legal", "sales", "exec"]
WHERES = [None, None, None, "category = 'hr'", "category IN ('it', 'finance')", "date >= '2025-06-01'",
          "NOT (category = 'hr')", "page >= 0 AND category != 'it'"]
N_QUERIES = 1000


@pytest.fixture(scope="module")
def multi_tenant(tmp_path_factory):
    rng = random.Random(20261123)
    recs = []
    for i in range(300):
        meta = {
            "tenant": rng.choice(TENANTS),
            "access_level": rng.randint(0, 3),
            "groups": rng.sample(GROUPS, rng.choice([0, 0, 1, 2])),
            "category": rng.choice(["hr", "it", "finance"]),
            "date": rng.choice(["2025-01-15", "2025-06-30", "2026-02-01"]),
        }
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        recs.append(Record(f"d{i}", text, meta=meta))
    cfg = rag_config()
    folder = tmp_path_factory.mktemp("acl") / "idx"
    ingest_records(recs, folder, cfg, embedder=CountingEmbedder())
    retriever = Retriever(Index.open(folder, cfg), cfg.search, parallel=False)
    everything = [c.record() for c in retriever.index.store.fetch()]
    assert len(everything) == 300
    yield retriever, everything
    retriever.close()


def random_caller(rng: random.Random) -> Caller:
    tenant = rng.choice(TENANTS + ["umbrella"])  # umbrella has no documents
    return Caller(tenant, tuple(rng.sample(GROUPS, rng.randint(0, 3))), rng.randint(0, 3))


def test_random_queries_never_leak(multi_tenant):
    retriever, everything = multi_tenant
    rng = random.Random(7)
    checked = hits_seen = 0
    for _ in range(N_QUERIES):
        caller = random_caller(rng)
        where = rng.choice(WHERES)
        mode = rng.choice(["dense", "sparse", "hybrid"])
        top_k = rng.choice([1, 5, 10, 50])
        query = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
        res = retriever.search(query, caller=caller, where=where, mode=mode, top_k=top_k,
                               use_mmr=rng.random() < 0.1)
        flt = parse_where(where)
        allowed = [r for r in everything if can_see(caller, r) and matches(flt, r)]
        for h in res.hits:
            rec = h.chunk.record()
            assert can_see(caller, rec), (caller, rec)
            assert matches(flt, rec), (where, rec)
        if caller.tenant == "umbrella":
            assert res.hits == []
        if mode == "dense":  # the filter runs before top-k: a dense query always fills k when it can
            assert len(res.hits) == min(top_k, len(allowed))
        assert len({h.chunk.id for h in res.hits}) == len(res.hits)
        checked += 1
        hits_seen += len(res.hits)
    assert checked == N_QUERIES and hits_seen > N_QUERIES  # the queries did return things to check
