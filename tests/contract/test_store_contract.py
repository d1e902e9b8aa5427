"""The ChunkStore contract, run on every backend: writes, reconciliation reads, filters, filtered search."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmtailor.rag.acl import Caller, acl_filter, can_see
from llmtailor.rag.filters import And, Cmp, HasAny, IsEmpty, Not, Or, all_of, matches, parse_where
from llmtailor.rag.store import ChunkStore


def random_filter(rng: random.Random, depth: int = 0):
    """A random filter tree over the filterable columns (the generator the semantics are checked with)."""
    kind = rng.random()
    if depth < 2 and kind < 0.3:
        parts = tuple(random_filter(rng, depth + 1) for _ in range(rng.randint(2, 3)))
        return And(parts) if rng.random() < 0.5 else Or(parts)
    if depth < 2 and kind < 0.4:
        return Not(random_filter(rng, depth + 1))
    col = rng.choice(["tenant", "access_level", "groups", "category", "date", "page", "source", "heading_path"])
    if col == "groups":
        if rng.random() < 0.3:
            return IsEmpty("groups")
        return HasAny("groups", tuple(rng.sample(["hr", "eng", "legal", "sales", "nobody"], rng.randint(1, 3))))
    if col in ("access_level", "page"):
        op = rng.choice(["=", "!=", "<", "<=", ">", ">=", "in", "notin"])
        value = tuple(rng.sample(range(5), 2)) if op in ("in", "notin") else rng.randint(0, 4)
        return Cmp(col, op, value)
    if col == "date":
        op = rng.choice(["=", "!=", "<", ">="])
        value = rng.choice(["2025-01-15", "2025-06-30", "2026-01-01", ""])
        if op in ("<", ">="):
            value = value or "2025-03-01"
            return And((Cmp("date", "!=", ""), Cmp("date", op, value)))
        return Cmp(col, op, value)
    values = {
        "tenant": ["", "acme", "globex", "initech", "umbrella"],
        "category": ["hr", "it", "finance", "", "legal"],
        "source": ["/docs/file1.md", "/docs/file7.md", "/nope.md"],
        "heading_path": ["", "A > B", "A"],
    }[col]
    op = rng.choice(["=", "!=", "in", "notin"])
    value = tuple(rng.sample(values, 2)) if op in ("in", "notin") else rng.choice(values)
    return Cmp(col, op, value)


def test_implements_protocol(make_store):
    assert isinstance(make_store(), ChunkStore)


def test_empty_store_reads_and_searches_nothing(make_store, query_vecs):
    store = make_store()
    assert store.count() == 0
    assert store.source_states() == {}
    assert store.fetch() == []
    assert store.search_dense(query_vecs[0], 5, None) == []
    assert store.search_sparse("refund", 5, None) == []
    assert store.delete_sources(["/x"]) == 0


def test_roundtrip_keeps_every_field(make_store, chunk_factory):
    chunks = chunk_factory(30, sources=3)
    store = make_store()
    store.replace_sources(sorted({c.source for c in chunks}), chunks)
    got = {c.id: c for c in store.fetch()}
    assert set(got) == {c.id for c in chunks}
    for c in chunks:
        assert got[c.id].record() == c.record()
    vecs = store.vectors([chunks[0].id, chunks[1].id])
    assert np.allclose(vecs[chunks[0].id], chunks[0].vector, atol=1e-6)
    by_text = store.vectors_for_text([chunks[2].text_hash, "missing"])
    assert set(by_text) == {chunks[2].text_hash}
    assert np.allclose(by_text[chunks[2].text_hash], chunks[2].vector, atol=1e-6)


def test_replace_sources_replaces_only_those_sources(make_store, chunk_factory):
    chunks = chunk_factory(40, sources=4)
    store = make_store()
    store.replace_sources(sorted({c.source for c in chunks}), chunks)
    target = "/docs/file1.md"
    old = [c for c in chunks if c.source == target]
    new = old[:2]
    for c in new:
        c.source_hash = "changed"
    store.replace_sources([target], new)
    states = store.source_states()
    assert states[target].chunks == 2 and states[target].source_hashes == {"changed"}
    assert store.count() == 40 - len(old) + 2
    others = [c for c in chunks if c.source != target]
    assert {c.id for c in store.fetch()} == {c.id for c in others} | {c.id for c in new}
    # Replacing with nothing empties the source.
    store.replace_sources([target], [])
    assert target not in store.source_states()
    with pytest.raises(ValueError):
        store.replace_sources(["/docs/file2.md"], [others[0]] if others[0].source != "/docs/file2.md" else [others[1]])


def test_delete_and_states(make_store, chunk_factory):
    chunks = chunk_factory(30, sources=3)
    store = make_store()
    store.replace_sources(sorted({c.source for c in chunks}), chunks)
    states = store.source_states()
    assert set(states) == {"/docs/file0.md", "/docs/file1.md", "/docs/file2.md"}
    st = states["/docs/file0.md"]
    assert (st.chunks, st.file_hash, st.mtime, st.size, st.source_hashes) == (10, "fh0", 1000.0, 100, {"sh0"})
    assert store.delete_sources(["/docs/file0.md", "/never.md"]) == 10
    assert store.count() == 20
    assert "/docs/file0.md" not in store.source_states()


def test_filters_match_reference_semantics(filled_store):
    store, chunks = filled_store
    rng = random.Random(7)
    records = [c.record() for c in chunks]
    for _ in range(40):
        flt = random_filter(rng)
        expected = {r["id"] for r in records if matches(flt, r)}
        assert store.count(flt) == len(expected), flt
        assert {c.id for c in store.fetch(flt)} == expected, flt


@pytest.mark.parametrize(
    "where",
    [
        "category = 'hr'",
        "category IN ('hr', 'it') AND access_level <= 'internal'",
        "NOT (category = 'finance') OR page >= 3",
        "date >= '2025-06-01'",
        "date < '2026-01-01' AND tenant != 'acme'",
        "source NOT IN ('/docs/file1.md')",
    ],
)
def test_where_strings_match_reference(filled_store, where):
    store, chunks = filled_store
    flt = parse_where(where)
    expected = {c.id for c in chunks if matches(flt, c.record())}
    assert {c.id for c in store.fetch(flt)} == expected


def test_dense_search_is_exact_top_k_among_allowed(filled_store, query_vecs, backend):
    store, chunks = filled_store
    rng = random.Random(3)
    for qv in query_vecs:
        caller = Caller(rng.choice(["acme", "globex", ""]), tuple(rng.sample(["hr", "eng", "legal"], 1)),
                        rng.randint(0, 3))
        flt = acl_filter(caller)
        allowed = [c for c in chunks if can_see(caller, c.record())]
        hits = store.search_dense(qv, 10, flt)
        assert len(hits) == min(10, len(allowed))  # filter before top-k: never fewer
        assert all(can_see(caller, h.chunk.record()) for h in hits)
        sims = np.array([float(c.vector @ qv) for c in allowed])
        best = np.sort(sims)[::-1][: len(hits)]
        got = np.array([h.dense for h in hits])
        assert np.all(np.diff(got) <= 1e-5)
        if backend != "lancedb-ivf":  # approximate index: ranking may differ slightly, never the filter
            assert np.allclose(got, best, atol=1e-4)


def test_sparse_search_ranks_matching_text_and_respects_filter(filled_store):
    store, chunks = filled_store
    caller = Caller("acme", ("hr",), 3)
    flt = all_of(acl_filter(caller), parse_where("category = 'hr'"))
    hits = store.search_sparse("refund payroll", 20, flt)
    assert hits, "BM25 found nothing"
    for h in hits:
        assert can_see(caller, h.chunk.record()) and h.chunk.category == "hr"
        assert "refund" in h.chunk.text or "payroll" in h.chunk.text
    assert [h.sparse for h in hits] == sorted((h.sparse for h in hits), reverse=True)
    assert store.search_sparse("the of and", 5, flt) == [] or all(h.sparse > 0 for h in hits)


def test_tenant_without_documents_gets_nothing(filled_store, query_vecs):
    store, _ = filled_store
    flt = acl_filter(Caller("umbrella", ("hr", "eng", "legal", "sales"), 99))
    assert store.search_dense(query_vecs[0], 50, flt) == []
    assert store.search_sparse("refund invoice payroll", 50, flt) == []
    assert store.count(flt) == 0


def test_sql_literals_are_escaped(make_store, chunk_factory):
    chunks = chunk_factory(5, sources=5)
    chunks[0].source = "/docs/it's \"quoted\".md"
    chunks[0].category = "o'neil"
    store = make_store()
    store.replace_sources(sorted({c.source for c in chunks}), chunks)
    assert store.count(parse_where("category = 'o''neil'")) == 1
    assert store.count(parse_where("category = 'x'' OR ''1''=''1'")) == 0
    assert store.delete_sources(["/docs/it's \"quoted\".md"]) == 1


def test_numpy_masks_match_reference_semantics(chunk_factory):
    """The columnar compiler (LanceDB's in-memory dense path) agrees with `matches` on random filters."""
    from llmtailor.rag.filters import Columns, to_mask

    chunks = chunk_factory(300, seed=5)
    records = [c.record() for c in chunks]
    cols = Columns(
        len(records),
        {name: [r[name] for r in records] for name in ("tenant", "category", "date", "source", "title",
                                                       "file_type", "heading_path", "access_level", "page",
                                                       "chunk_index")},
        {"groups": [r["groups"] for r in records]},
    )
    rng = random.Random(21)
    for _ in range(300):
        flt = random_filter(rng)
        expected = [matches(flt, r) for r in records]
        assert to_mask(flt, cols).tolist() == expected, flt
    mixed = [Cmp("page", "in", ("1", 2)), Cmp("page", "=", "1"), Cmp("page", "!=", "1"), Cmp("category", "<", 3)]
    for flt in mixed:  # literals of the wrong type behave as in Python: never equal, ranges false
        assert to_mask(flt, cols).tolist() == [matches(flt, r) for r in records], flt
