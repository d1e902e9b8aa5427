"""Search through an ingested index: modes, filters, ACL before top-k, MMR, multi-query, rerankers."""

from __future__ import annotations

import pytest

from llmtailor.errors import TailorError
from llmtailor.rag.acl import Caller, can_see
from llmtailor.rag.filters import matches, parse_where
from llmtailor.rag.index import Index
from llmtailor.rag.ingest import Record, ingest, ingest_records
from llmtailor.rag.meta import DocMeta
from llmtailor.rag.search import Retriever
from tests.unit.rag.conftest import CountingEmbedder, rag_config


@pytest.fixture()
def retriever(corpus, tmp_path):
    cfg = rag_config()
    ingest([corpus], tmp_path / "idx", cfg, embedder=CountingEmbedder(), defaults=DocMeta(tenant="acme"))
    r = Retriever(Index.open(tmp_path / "idx", cfg), cfg.search)
    yield r
    r.close()


ACME = Caller("acme", (), 3)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_finds_the_right_document(retriever, mode):
    res = retriever.search("hotel rooms per night", caller=ACME, mode=mode, top_k=3)
    assert res.mode == mode and res.hits
    assert res.hits[0].chunk.source.endswith("travel.docx")
    d = res.as_dict()
    assert d["results"][0]["rank"] == 1 and d["results"][0]["heading_path"].endswith("Hotels")
    assert set(d["timings_ms"]) >= {"embed_ms", "search_ms", "total_ms"}


def test_hybrid_fuses_both_rankings(retriever):
    res = retriever.search("refund gift cards", caller=ACME, mode="hybrid", top_k=5)
    top = res.hits[0]
    assert top.rank_dense is not None and top.rank_sparse is not None
    assert "gift cards" in top.chunk.text
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)


def test_where_narrows_and_other_tenants_see_nothing(retriever):
    res = retriever.search("policy", caller=ACME, where="file_type = 'pdf'", top_k=10)
    assert res.hits and all(h.chunk.file_type == "pdf" for h in res.hits)
    for caller in (Caller("globex", ("hr",), 3), Caller()):
        for mode in ("dense", "sparse", "hybrid"):
            assert retriever.search("refund policy", caller=caller, mode=mode).hits == []
    with pytest.raises(TailorError, match="unknown column"):
        retriever.search("x", caller=ACME, where="password = 'x'")
    with pytest.raises(TailorError, match="unknown search mode"):
        retriever.search("x", caller=ACME, mode="fuzzy")
    with pytest.raises(TailorError, match="empty query"):
        retriever.search("  ", caller=ACME)


def test_acl_is_applied_before_top_k(tmp_path):
    """50 confidential chunks match the query better than anything public; a public caller still gets k results."""
    cfg = rag_config()
    recs = [Record(f"s{i}", "refund policy refund refund exceptions", meta={"access_level": "restricted"})
            for i in range(50)]
    recs += [Record(f"p{i}", f"public note number {i} mentions a refund once", meta={"access_level": "public"})
             for i in range(8)]
    ingest_records(recs, tmp_path / "idx", cfg, embedder=CountingEmbedder())
    r = Retriever(Index.open(tmp_path / "idx", cfg), cfg.search.model_copy(update={"candidates": 5}))
    try:
        for mode in ("dense", "sparse", "hybrid"):
            res = r.search("refund policy exceptions", caller=Caller(), mode=mode, top_k=5)
            assert len(res.hits) == 5, mode  # a post-filter on 5 candidates would have returned 0
            assert all(h.chunk.access_level == 0 for h in res.hits)
    finally:
        r.close()


def test_mmr_diversifies(tmp_path):
    cfg = rag_config()
    recs = [Record(f"dup{i}", "laptop security lock screen password policy", meta={}) for i in range(4)]
    recs += [Record("other", "laptop travel insurance claims", meta={})]
    ingest_records(recs, tmp_path / "idx", cfg, embedder=CountingEmbedder())
    r = Retriever(Index.open(tmp_path / "idx", cfg), cfg.search)
    try:
        plain = r.search("laptop security", mode="dense", top_k=2)
        assert all(h.chunk.source.startswith("record:dup") for h in plain.hits)
        diverse = r.search("laptop security", mode="dense", top_k=2, use_mmr=True)
        assert {h.chunk.source for h in diverse.hits} >= {"record:other"}
    finally:
        r.close()


def test_multi_query_rewrite_fuses_alternatives(retriever):
    asked = []

    def rewriter(q: str) -> list[str]:
        asked.append(q)
        return ["hotel cap per night", q, "  "]

    retriever.rewriter = rewriter
    res = retriever.search("accommodation limits", caller=ACME, top_k=3, rewrite=True)
    assert asked == ["accommodation limits"]
    assert res.queries == ["accommodation limits", "hotel cap per night"]
    assert "rewrite_ms" in res.timings and res.hits[0].chunk.source.endswith("travel.docx")
    off = retriever.search("accommodation limits", caller=ACME, top_k=3)
    assert off.queries == ["accommodation limits"]  # off by default
    retriever.rewriter = None
    with pytest.raises(TailorError, match="needs an LLM"):
        retriever.search("x", caller=ACME, rewrite=True)


def test_custom_reranker_plugs_in(retriever):
    class ByLength:
        def rerank(self, query, hits):
            for h in hits:
                h.rerank = h.score = -len(h.chunk.text)
            return sorted(hits, key=lambda h: -h.score)

    retriever.reranker = ByLength()
    res = retriever.search("policy", caller=ACME, top_k=4)
    lengths = [len(h.chunk.text) for h in res.hits]
    assert lengths == sorted(lengths) and all(h.rerank is not None for h in res.hits)


def test_cross_encoder_from_a_local_folder(retriever, tmp_path):
    """A (random, tiny) BERT cross-encoder saved to disk: loaded offline and used to re-order."""
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from llmtailor.rag.rerank import CrossEncoderReranker, load_reranker

    folder = tmp_path / "xenc"
    folder.mkdir()
    words = sorted({w for t in ["refund policy hotel night laptop password travel booking"] for w in t.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=1))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rr = load_reranker(str(folder))
    assert isinstance(rr, CrossEncoderReranker)
    retriever.reranker = rr
    res = retriever.search("refund policy", caller=ACME, top_k=5)
    assert all(h.rerank is not None for h in res.hits)
    assert [h.rerank for h in res.hits] == sorted((h.rerank for h in res.hits), reverse=True)
    assert load_reranker("fusion") is None
    with pytest.raises(TailorError, match="not a local cross-encoder folder"):
        load_reranker(str(tmp_path))


def test_filter_semantics_hold_through_the_retriever(retriever):
    where = "category = 'finance' OR page = 2"
    res = retriever.search("refund expenses", caller=ACME, where=where, top_k=10)
    assert res.hits
    flt = parse_where(where)
    assert all(matches(flt, h.chunk.record()) and can_see(ACME, h.chunk.record()) for h in res.hits)
