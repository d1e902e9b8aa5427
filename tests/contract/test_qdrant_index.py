"""The whole pipeline on the Qdrant backend (local mode in the index folder): ingest, re-ingest, ACL search."""

from __future__ import annotations

from llmtailor.rag.acl import Caller
from llmtailor.rag.config import RagConfig
from llmtailor.rag.embed import HashingEmbedder
from llmtailor.rag.index import Index
from llmtailor.rag.ingest import ingest
from llmtailor.rag.meta import DocMeta
from llmtailor.rag.search import Retriever


def test_ingest_and_search_on_qdrant_local_mode(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text("# Refunds\n\nRefunds are paid within fourteen days.\n", encoding="utf-8")
    (docs / "leave.md").write_text("# Leave\n\nTwenty-five days of holiday per year.\n", encoding="utf-8")
    (docs / "leave.meta.yaml").write_text("groups: [hr]\naccess_level: confidential\n", encoding="utf-8")
    cfg = RagConfig.model_validate({"embedding": {"model": "hashing"}, "store": {"backend": "qdrant"}})
    rep = ingest([docs], tmp_path / "idx", cfg, embedder=HashingEmbedder(), defaults=DocMeta(tenant="acme"))
    assert rep.files_new == 2 and rep.skipped == []
    assert (tmp_path / "idx" / "qdrant").is_dir()
    again = ingest([docs], tmp_path / "idx", cfg, embedder=HashingEmbedder(), defaults=DocMeta(tenant="acme"))
    assert again.files_unchanged == 2 and again.embedded == 0
    r = Retriever(Index.open(tmp_path / "idx", cfg), cfg.search, parallel=False)
    try:
        for mode in ("dense", "sparse", "hybrid"):
            public = r.search("holiday days per year", caller=Caller("acme"), mode=mode, top_k=5)
            assert all(h.chunk.source.endswith("refunds.md") for h in public.hits), mode
            hr = r.search("holiday days per year", caller=Caller("acme", ("hr",), "confidential"), mode=mode)
            assert hr.hits[0].chunk.source.endswith("leave.md"), mode
            assert r.search("holiday", caller=Caller("globex", ("hr",), 3), mode=mode).hits == []
    finally:
        r.close()
    (docs / "refunds.md").unlink()
    rep = ingest([docs], tmp_path / "idx", cfg, embedder=HashingEmbedder(), defaults=DocMeta(tenant="acme"))
    assert rep.files_deleted == 1
    idx = Index.open(tmp_path / "idx", cfg)
    try:
        assert {c.source.rsplit("/", 1)[-1] for c in idx.store.fetch()} == {"leave.md"}
        assert idx.info["store"]["backend"] == "qdrant"
    finally:
        idx.close()
