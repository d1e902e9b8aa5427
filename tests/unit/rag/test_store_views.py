"""LanceDB read views: every search sees the latest commit (also another process's), in-memory copies never go
stale, the access filter holds on every path, and a hybrid search reads rows for its results only."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from llmtailor.rag.acl import Caller, acl_filter, can_see
from llmtailor.rag.config import RagConfig
from llmtailor.rag.embed import HashingEmbedder
from llmtailor.rag.filters import Cmp, all_of, matches, parse_where
from llmtailor.rag.lancedb_store import LanceDBStore
from llmtailor.rag.search import Retriever
from tests.contract.conftest import WORDS, make_chunks

DIM = 384
EMB = HashingEmbedder(DIM)


def chunk_like(cid: str, text: str, **meta):
    c = make_chunks(1)[0]
    c.id, c.text, c.search_text, c.text_hash = cid, text, text, f"h-{cid}"
    c.source = f"/docs/{cid}.md"
    c.tenant, c.access_level, c.groups, c.category = "acme", 0, [], "hr"
    for k, v in meta.items():
        setattr(c, k, v)
    c.vector = EMB.embed_query(text)
    return c


def fill(store: LanceDBStore, n: int = 300, seed: int = 11):
    chunks = make_chunks(n, seed=seed, sources=30)
    store.replace_sources(sorted({c.source for c in chunks}), chunks)
    store.optimize()
    return chunks


class _Index:
    def __init__(self, store):
        self.store = store
        self.embedder = EMB

    def close(self):
        self.store.close()


@pytest.mark.parametrize("memory", ["eager", "off"])
def test_a_cached_searcher_sees_another_handles_writes(tmp_path, memory):
    """The reader keeps its view (and, with memory, a numpy copy); a second handle - another process in
    production - adds, re-permissions and deletes chunks; every next search reflects each commit."""
    reader = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory=memory)
    fill(reader)
    public = Caller("acme", (), 0)
    flt = acl_filter(public)
    query = "zeppelin quartz manifesto"
    assert all(h.chunk.id != "new" for h in reader.search_dense(EMB.embed_query(query), 5, flt))
    v0 = reader.read_view()
    assert (v0.memory is not None) == (memory == "eager")

    writer = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="off")
    writer.replace_sources(["/docs/new.md"], [chunk_like("new", query)])
    for search in (reader.search_dense, reader.search_sparse):
        hits = search(EMB.embed_query(query) if search == reader.search_dense else query, 5, flt)
        assert hits and hits[0].chunk.id == "new", search.__name__
    assert reader.read_view().version > v0.version

    # Raised to restricted by the writer: gone for a public caller at once, still there for a cleared one.
    writer.replace_sources(["/docs/new.md"], [chunk_like("new", query, access_level=3)])
    assert all(h.chunk.id != "new" for h in reader.search_dense(EMB.embed_query(query), 5, flt))
    assert all(h.chunk.id != "new" for h in reader.search_sparse(query, 5, flt))
    cleared = acl_filter(Caller("acme", (), 3))
    assert reader.search_dense(EMB.embed_query(query), 5, cleared)[0].chunk.id == "new"

    writer.delete_sources(["/docs/new.md"])
    assert all(h.chunk.id != "new" for h in reader.search_dense(EMB.embed_query(query), 5, cleared))
    assert all(h.chunk.id != "new" for h in reader.search_sparse(query, 5, cleared))
    assert reader.count() == 300
    writer.close()
    reader.close()


def test_retriever_over_a_warm_memory_sees_other_writes_and_keeps_the_acl(tmp_path):
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="eager")
    fill(store)
    r = Retriever(_Index(store), RagConfig().search)
    query = "zeppelin quartz manifesto"
    first = r.search(query, caller=Caller("acme", ("hr",), 1), top_k=5)
    assert all(h.chunk.id != "secret" for h in first.hits)
    writer = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="off")
    writer.replace_sources(["/docs/secret.md", "/docs/open.md"], [
        chunk_like("secret", query, groups=["legal"], access_level=0),
        chunk_like("open", query + " open", groups=["hr"], access_level=1),
    ])
    for mode in ("dense", "sparse", "hybrid"):
        res = r.search(query, caller=Caller("acme", ("hr",), 1), top_k=5, mode=mode)
        ids = [h.chunk.id for h in res.hits]
        assert "open" in ids[:2] and "secret" not in ids, (mode, ids)
        legal = r.search(query, caller=Caller("acme", ("legal",), 0), top_k=5, mode=mode)
        assert legal.hits[0].chunk.id == "secret" and "open" not in [h.chunk.id for h in legal.hits], mode
    assert store.read_view().memory is not None  # the new version got its own copy
    writer.close()
    r.close()


def test_memory_path_matches_lance_exactly_and_never_leaks(tmp_path):
    """Forced in-memory search and Lance's own scan return the same top-k for 300 random callers and filters."""
    path = tmp_path / "l"
    mem = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="eager")
    chunks = fill(mem, 400, seed=5)
    lance = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="off")
    records = {c.id: c.record() for c in chunks}
    rng = random.Random(4)
    wheres = [None, "category = 'hr'", "category IN ('hr', 'it')", "page >= 2", "NOT (category = 'finance')"]
    for _ in range(300):
        caller = Caller(rng.choice(["", "acme", "globex", "initech", "umbrella"]),
                        tuple(rng.sample(["hr", "eng", "legal", "sales"], rng.randint(0, 2))), rng.randint(0, 3))
        where = rng.choice(wheres)
        flt = all_of(acl_filter(caller), parse_where(where))
        vec = EMB.embed_query(" ".join(rng.sample(WORDS, 3)))
        k = rng.choice([1, 5, 20])
        a = mem.search_dense(vec, k, flt)
        b = lance.search_dense(vec, k, flt)
        allowed = [c for c in chunks if matches(flt, records[c.id])]
        assert len(a) == len(b) == min(k, len(allowed))
        assert np.allclose([h.dense for h in a], [h.dense for h in b], atol=1e-5)
        for h in a:
            assert can_see(caller, h.chunk.record()) and matches(flt, h.chunk.record())
    assert mem.read_view().memory is not None and lance.read_view().memory is None
    mem.close()
    lance.close()


def test_in_lists_are_not_cut_to_the_column_width(tmp_path):
    """numpy's fixed-width strings would cut 'hr-private' to 'hr' (the column's width) and match it."""
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="eager")
    docs = [chunk_like(f"d{i}", f"budget report {i}", category=cat, tenant=tenant)
            for i, (cat, tenant) in enumerate([("hr", "acme"), ("it", "acme"), ("hr", "ac")])]
    store.replace_sources(sorted(c.source for c in docs), docs)
    vec = EMB.embed_query("budget report")
    for flt in (parse_where("category IN ('hr-private')"), Cmp("tenant", "in", ("acme-evil",))):
        assert store.search_dense(vec, 5, flt) == []
    got = store.search_dense(vec, 5, all_of(Cmp("tenant", "=", "acme"), parse_where("category IN ('hr')")))
    assert [h.chunk.id for h in got] == ["d0"]
    assert store.read_view().memory is not None
    store.close()


def test_auto_mode_builds_the_copy_in_the_background_from_the_second_search(tmp_path):
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="auto")
    fill(store, 100)
    vec = EMB.embed_query("refund invoice")
    flt = acl_filter(Caller("acme", ("hr",), 3))
    first = store.search_dense(vec, 5, flt)  # a one-shot process (the CLI) stops here: no copy is ever built
    view = store.read_view()
    assert view.building
    for _ in range(200):
        if view.memory is not None:
            break
        time.sleep(0.02)
    assert view.memory is not None
    again = store.search_dense(vec, 5, flt)
    assert [h.chunk.id for h in again] == [h.chunk.id for h in first]
    assert np.allclose([h.dense for h in again], [h.dense for h in first], atol=1e-5)
    store.close()


def test_one_search_builds_nothing_and_above_ann_min_rows_nothing_is_built(tmp_path):
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="auto")
    fill(store, 50)
    one_shot = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="auto")
    one_shot.search_dense(EMB.embed_query("refund"), 3, None)
    view = one_shot._view
    assert view is not None and not view.building and view.memory is None
    big = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10, memory="eager")
    assert big.warm() is False and big.read_view().memory is None
    for s in (store, one_shot, big):
        s.close()


def test_a_view_is_pinned_to_its_version(tmp_path):
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="off")
    chunks = fill(store, 40)
    view = store.read_view()
    ranked = view.sparse(chunks[0].text, 3, None)
    store.delete_sources(sorted({c.source for c in chunks}))
    assert store.count() == 0
    old = view.chunks(ranked, None)  # the pinned version still has them: one search reads one version
    assert set(old) == {r.id for r in ranked}
    assert store.read_view().version != view.version
    assert store.read_view().sparse(chunks[0].text, 3, None) == []
    store.close()


def test_a_table_created_or_rebuilt_elsewhere_is_picked_up(tmp_path):
    reader = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="eager")
    assert reader.search_sparse("refund", 5, None) == [] and reader.version == 0
    writer = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9)
    fill(writer, 30)
    assert reader.count() == 30 and reader.search_sparse("refund invoice payroll", 5, None)
    old = reader.read_view()
    assert old.memory is not None
    # A --rebuild by another process: the table is dropped and written again until its version number is the
    # one the reader's cached view (and in-memory copy) has; the reader must still notice the new table.
    writer._db.drop_table(writer.collection)
    rebuilt = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9)
    doc = chunk_like("only", "lighthouse keeper")
    while rebuilt.version < old.version:
        rebuilt.replace_sources([doc.source], [doc])
    assert rebuilt.version == old.version
    assert [h.chunk.id for h in reader.search_sparse("lighthouse", 5, None)] == ["only"]
    assert [h.chunk.id for h in reader.search_dense(doc.vector, 5, None)] == ["only"]
    assert reader.read_view() is not old and reader.count() == 1
    for s in (reader, writer, rebuilt):
        s.close()


def test_chunks_recheck_the_filter(tmp_path, caplog):
    """A candidate that does not match the filter (never produced by the rankings) is dropped when read."""
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="off")
    fill(store, 60)
    view = store.read_view()
    ranked = view.sparse("refund invoice payroll", 60, None)
    caller = Caller("acme", ("hr", "eng"), 2)
    got = view.chunks(ranked, acl_filter(caller))
    assert got and len(got) < len(ranked)
    assert all(can_see(caller, c.record()) for c in got.values())
    assert "does not match the search filter" in caplog.text
    store.close()


class _NoViews:
    """The same LanceDB store without read views: the Retriever's generic path (as for Qdrant)."""

    def __init__(self, store):
        self._store = store
        self.dim = store.dim

    def __getattr__(self, name):
        if name == "read_view":
            raise AttributeError(name)
        return getattr(self._store, name)


def test_view_path_gives_the_generic_paths_results_and_reads_only_the_winners(tmp_path):
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="eager")
    fill(store, 300)
    cfg = RagConfig().search
    fast = Retriever(_Index(store), cfg)
    slow = Retriever(_Index(_NoViews(store)), cfg)
    reads: list[int] = []
    original = type(store.read_view()).chunks

    def spy(self, ranked, flt):
        reads.append(len(ranked))
        return original(self, ranked, flt)

    rng = random.Random(8)
    try:
        type(store.read_view()).chunks = spy
        for i in range(40):
            caller = Caller(rng.choice(["acme", "globex", ""]), tuple(rng.sample(["hr", "eng"], rng.randint(0, 2))),
                            rng.randint(0, 3))
            q = " ".join(rng.sample(WORDS, 3))
            for mode in ("dense", "sparse", "hybrid"):
                reads.clear()
                a = fast.search(q, caller=caller, mode=mode, top_k=5, with_similarity=i % 2 == 0)
                assert reads and max(reads) <= 5, reads  # rows are read for the 5 results, not 2 x 50 candidates
                b = slow.search(q, caller=caller, mode=mode, top_k=5, with_similarity=i % 2 == 0)
                assert [h.chunk.id for h in a.hits] == [h.chunk.id for h in b.hits], (mode, q, caller)
                for x, y in zip(a.hits, b.hits, strict=True):
                    assert x.score == pytest.approx(y.score, abs=1e-5)
                    assert (x.rank_dense, x.rank_sparse) == (y.rank_dense, y.rank_sparse)
                    assert (x.dense is None) == (y.dense is None) and (x.sparse is None) == (y.sparse is None)
                    assert x.chunk.record() == y.chunk.record()
                assert {"dense_ms", "sparse_ms", "fetch_ms"} <= set(a.timings)
        mmr = fast.search("refund invoice", caller=Caller("acme", ("hr",), 3), top_k=3, use_mmr=True)
        assert len(mmr.hits) == 3 and max(reads) > 5  # MMR needs the pool's rows
    finally:
        type(store.read_view()).chunks = original
        fast.close()


def test_result_rows_come_from_memory_and_equal_lances(tmp_path):
    path = tmp_path / "l"
    with_rows = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="eager")
    fill(with_rows, 200)
    without_rows = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="eager", memory_rows=False)
    lance = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="off")
    ranked = lance.read_view().sparse("refund invoice payroll", 30, None)
    ranked += lance.read_view().dense(EMB.embed_query("audit privacy"), 30, None)
    reference = lance.read_view().chunks(ranked, None)
    assert len(reference) >= 30
    for store, reads_lance in ((with_rows, False), (without_rows, True)):
        view = store.read_view()
        assert view.memory is not None and view.version == lance.read_view().version
        takes: list[list[int]] = []
        take = view.tbl.take_row_ids
        view.tbl.take_row_ids = lambda rows, take=take, takes=takes: takes.append(rows) or take(rows)
        got = view.chunks(ranked, None)
        assert bool(takes) == reads_lance
        assert set(got) == set(reference)
        assert all(got[i].record() == reference[i].record() for i in got)
        flt = acl_filter(Caller("acme", ("hr",), 1))
        assert set(view.chunks(ranked, flt)) == {i for i, c in reference.items() if matches(flt, c.record())}
    for s in (with_rows, without_rows, lance):
        s.close()
