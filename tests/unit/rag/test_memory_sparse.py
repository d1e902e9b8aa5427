"""The in-memory BM25 of a LanceDB snapshot: tokenises like Lance's FTS index, scores like it, applies the access
filter as a mask before top-k, and is rebuilt on every commit, including another process's."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from llmtailor.rag.acl import Caller, acl_filter, can_see
from llmtailor.rag.config import RagConfig
from llmtailor.rag.filters import all_of, matches, parse_where
from llmtailor.rag.lancedb_store import LanceDBStore
from llmtailor.rag.search import Retriever
from llmtailor.rag.sparse import lance_terms
from tests.contract.conftest import WORDS
from tests.unit.rag.test_store_views import DIM, _Index, chunk_like, fill

ROOT = Path(__file__).resolve().parents[3]


def _no_lance_fts(view):
    """Make Lance's full-text search on this view fail, so a passing search proves the snapshot answered."""
    search = view.tbl.search

    def guarded(*args, **kwargs):
        if kwargs.get("query_type") == "fts":
            raise AssertionError("the BM25 leg went to Lance")
        return search(*args, **kwargs)

    view.tbl.search = guarded


def test_tokens_are_the_fts_index_tokens(tmp_path):
    """Each probe word matches, in a real Lance FTS index, exactly the documents whose `lance_terms` share a term with
    it: stop words (checked on the stem), stems, ASCII folding, ligatures, underscores, digits, long tokens."""
    import lancedb
    import pyarrow as pa

    probes = ["the", "because", "ours", "yourselves", "does", "running", "runs", "café", "cafe", "ﬁle", "file",
              "foo_bar", "foo", "co2", "x", "7", "Naïve", "NAIVE", "über", "ΑΒΓ", "αβγ", "a" * 45, "a" * 38,
              "don't", "it's", "Refunds", "refund"]
    docs = [f"zz{i} {w}" for i, w in enumerate(probes)]
    tbl = lancedb.connect(str(tmp_path)).create_table("t", pa.table({"id": list(range(len(docs))), "t": docs}))
    tbl.create_fts_index("t", language="English", stem=True, remove_stop_words=True)
    for w in probes:
        got = set(tbl.search(w, query_type="fts", fts_columns="t").select(["id", "_score"]).limit(100)
                  .to_arrow()["id"].to_pylist())
        want = {i for i, d in enumerate(docs) if set(lance_terms(d)) & set(lance_terms(w))}
        assert got == want, (w, lance_terms(w))


def _bm25_oracle(chunks, query: str, flt, k: int) -> list[tuple[str, float]]:
    """BM25 written out from the formula Lance uses (idf over every chunk, k1 1.2, b 0.75), then filtered and cut."""
    docs = {c.id: Counter(lance_terms(c.search_text)) for c in chunks}
    n = len(docs)
    avg = sum(sum(t.values()) for t in docs.values()) / n
    df = Counter(term for t in docs.values() for term in t)
    out = []
    for c in chunks:
        if not matches(flt, c.record()):
            continue
        tf, length = docs[c.id], sum(docs[c.id].values())
        score = 0.0
        for term in lance_terms(query):
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] * 2.2 / (tf[term] + 1.2 * (0.25 + 0.75 * length / avg))
        if score > 0:
            out.append((c.id, score))
    out.sort(key=lambda x: -x[1])
    return out[:k]


def _same_ranking(got, want) -> None:
    """Equal scores rank by rank; equal id sets above the last score (chunks tied at the cut may differ)."""
    assert len(got) == len(want)
    assert [round(s, 4) for _, s in got] == pytest.approx([round(s, 4) for _, s in want], abs=2e-4)
    if want:
        cut = want[-1][1] + 1e-4
        assert {i for i, s in got if s > cut} == {i for i, s in want if s > cut}


def test_snapshot_bm25_equals_lance_fts_and_the_formula_and_never_leaks(tmp_path):
    path = tmp_path / "l"
    mem = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="eager")
    chunks = fill(mem, 400, seed=5)
    lance = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="off")
    view = mem.read_view()
    assert view.in_memory and view.memory.bm25 is not None
    _no_lance_fts(view)
    rng = random.Random(7)
    wheres = [None, "category = 'hr'", "page >= 2", "NOT (category = 'finance')"]
    for _ in range(150):
        caller = Caller(rng.choice(["", "acme", "globex", "umbrella"]),
                        tuple(rng.sample(["hr", "eng", "legal", "sales"], rng.randint(0, 2))), rng.randint(0, 3))
        flt = all_of(acl_filter(caller), parse_where(rng.choice(wheres)))
        query = " ".join(rng.sample(WORDS, rng.randint(1, 4))) + rng.choice(["", " the", " Refunds!", " payrolls"])
        k = rng.choice([1, 5, 50])
        got = mem.read_view().sparse(query, k, flt)
        ref = lance.read_view().sparse(query, k, flt)
        _same_ranking([(r.id, r.score) for r in got], [(r.id, r.score) for r in ref])
        _same_ranking([(r.id, r.score) for r in got], _bm25_oracle(chunks, query, flt, k))
        records = {c.id: c.record() for c in chunks}
        assert all(can_see(caller, records[r.id]) and matches(flt, records[r.id]) for r in got)
    mem.close()
    lance.close()


def test_the_mask_goes_in_before_top_k(tmp_path):
    """Twenty better-matching chunks the caller may not see (other tenant, higher level, other group) must not
    push the caller's three weaker matches out of a top-3."""
    store = LanceDBStore(tmp_path / "l", DIM, ann_min_rows=10**9, memory="eager")
    hidden = [chunk_like(f"x{i}", "pension pension pension audit", tenant=t, access_level=lv, groups=g)
              for i, (t, lv, g) in enumerate([("globex", 0, []), ("acme", 3, []), ("acme", 0, ["legal"])] * 7)]
    mine = [chunk_like(f"m{i}", f"pension {' '.join(['filler'] * (i + 3))}", groups=g)
            for i, g in enumerate([[], ["hr"], []])]
    store.replace_sources(sorted(c.source for c in hidden + mine), hidden + mine)
    view = store.read_view()
    assert view.in_memory
    _no_lance_fts(view)
    got = view.sparse("pension audit", 3, acl_filter(Caller("acme", ("hr",), 1)))
    assert [r.id for r in got] == ["m0", "m1", "m2"]
    assert view.sparse("pension", 50, acl_filter(Caller("acme", (), 0))) and \
        {r.id for r in view.sparse("pension", 50, acl_filter(Caller("acme", (), 0)))} == {"m0", "m2"}
    assert view.sparse("pension", 5, acl_filter(Caller("initech", ("hr",), 3))) == []
    store.close()


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from llmtailor.rag.lancedb_store import LanceDBStore
    from tests.unit.rag.test_store_views import DIM, chunk_like
    writer = LanceDBStore({path!r}, DIM, ann_min_rows=10**9, memory="off")
    action, level = sys.argv[1], int(sys.argv[2])
    if action == "put":
        writer.replace_sources(["/docs/new.md"], [chunk_like("new", "zeppelin quartz manifesto", access_level=level)])
    else:
        writer.delete_sources(["/docs/new.md"])
""")


@pytest.mark.parametrize("memory", ["eager", "auto"])
def test_another_process_changes_reach_a_warm_searcher_at_its_next_search(tmp_path, memory):
    """A long-lived reader with a built snapshot; another process adds a chunk, raises its level, deletes it. The
    reader's next search reflects each commit: the snapshot (and its BM25) is never searched past its version."""
    path = tmp_path / "l"
    reader = LanceDBStore(path, DIM, ann_min_rows=10**9, memory=memory)
    fill(reader)
    reader.warm()
    assert reader.read_view().in_memory
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(root=str(ROOT), path=str(path)))
    r = Retriever(_Index(reader), RagConfig().search)
    public, cleared = Caller("acme", (), 0), Caller("acme", (), 3)

    def change(*argv: str) -> None:
        subprocess.run([sys.executable, str(script), *argv], check=True, cwd=ROOT)

    def ids(caller: Caller, mode: str) -> list[str]:
        return [h.chunk.id for h in r.search("zeppelin quartz manifesto", caller=caller, mode=mode, top_k=5).hits]

    change("put", "0")
    for mode in ("sparse", "hybrid"):
        assert ids(public, mode)[0] == "new", mode
    change("put", "3")  # made restricted by the other process: gone at once for a public caller
    t0 = time.perf_counter()
    for mode in ("sparse", "hybrid"):
        assert "new" not in ids(public, mode), mode
        assert ids(cleared, mode)[0] == "new", mode
    assert time.perf_counter() - t0 < 10
    change("delete", "0")
    for mode in ("sparse", "hybrid"):
        assert "new" not in ids(cleared, mode), mode
    if memory == "auto":
        for _ in range(300):  # the newest version gets its own snapshot in the background
            if reader.read_view().in_memory:
                break
            time.sleep(0.02)
    view = reader.read_view()
    assert view.in_memory
    _no_lance_fts(view)
    assert "new" not in ids(cleared, "sparse")
    r.close()


def test_hybrid_on_the_snapshot_equals_hybrid_with_lance_fts(tmp_path):
    """The whole Retriever: snapshot BM25 and Lance FTS give the same fused results. Every chunk has its own length,
    so BM25 scores rarely tie (Lance orders ties its own way); queries whose candidates tie are skipped."""
    path = tmp_path / "l"
    mem = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="eager")
    docs = [chunk_like(f"d{i}", f"{' '.join(random.Random(i).sample(WORDS, 6))} note{i} " + "x " * i,
                       groups=[["hr"], [], ["eng"]][i % 3], access_level=i % 3) for i in range(120)]
    mem.replace_sources(sorted(c.source for c in docs), docs)
    mem.optimize()
    fts = LanceDBStore(path, DIM, ann_min_rows=10**9, memory="eager", memory_bm25=False)
    a, b = Retriever(_Index(mem), RagConfig().search), Retriever(_Index(fts), RagConfig().search)
    assert mem.read_view().in_memory and not fts.read_view().in_memory and fts.read_view().memory is not None
    compared = 0
    for i in range(0, 120, 4):
        caller = Caller("acme", (["hr"], ["eng"], [])[i % 3], i % 4)
        query = f"note{i} {docs[i].text.split()[0]}"
        scores = [r.score for r in fts.read_view().sparse(query, 50, acl_filter(caller))]
        if len({round(s, 4) for s in scores}) < len(scores):
            continue
        x = a.search(query, caller=caller, top_k=5)
        y = b.search(query, caller=caller, top_k=5)
        compared += 1
        assert [h.chunk.id for h in x.hits] == [h.chunk.id for h in y.hits], query
        assert [h.score for h in x.hits] == pytest.approx([h.score for h in y.hits], abs=1e-6)
    assert compared >= 15
    a.close()
    b.close()
