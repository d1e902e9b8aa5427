"""Ingest: every format, every bad input reported (rest ingested), incremental re-index, crash safety, versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmtailor.errors import TailorError
from llmtailor.rag.index import Index
from llmtailor.rag.ingest import Record, ingest, ingest_records
from llmtailor.rag.meta import DocMeta
from tests.unit.rag.conftest import CountingEmbedder, make_pdf_with_outline, rag_config


def chunks_of(index_dir: Path, cfg=None):
    idx = Index.open(index_dir, cfg or rag_config())
    try:
        return idx.store.fetch()
    finally:
        idx.close()


def reasons(report) -> dict[str, str]:
    return {Path(s.file).name: s.reason for s in report.skipped}


def test_ingests_every_format_with_structure(corpus, tmp_path, embedder, cfg):
    rep = ingest([corpus], tmp_path / "idx", cfg, embedder=embedder, defaults=DocMeta(tenant="acme"))
    assert rep.skipped == []
    assert rep.files_new == 5 and rep.files_seen == 5
    chunks = chunks_of(tmp_path / "idx")
    assert rep.chunks_total == len(chunks) == rep.chunks_written
    by_type = {c.file_type for c in chunks}
    assert by_type == {"markdown", "text", "html", "docx", "pdf"}
    assert all(c.tenant == "acme" for c in chunks)
    md = [c for c in chunks if c.file_type == "markdown"]
    assert {c.heading_path for c in md} >= {"Refund Policy > Refunds > Exceptions"}
    assert all(c.category == "finance" and c.date == "2025-03-01" and c.meta == {"owner": "ops"} for c in md)
    pdf = [c for c in chunks if c.file_type == "pdf"]
    assert {c.page for c in pdf} == {1, 2} and all(c.title == "Employee Handbook" for c in pdf)
    assert any(c.heading_path == "Expenses" and c.page == 2 for c in pdf)
    docx = [c for c in chunks if c.file_type == "docx"]
    assert any(c.heading_path.endswith("Booking > Hotels") for c in docx)
    for c in chunks:  # search text carries the title and headings, text is the exact passage
        assert c.text in c.search_text and c.char_end > c.char_start


def test_sidecar_metadata_applies(corpus, tmp_path, embedder, cfg):
    (corpus / "hr" / "leave.txt.meta.yaml").write_text(
        "access_level: confidential\ngroups: [hr]\ncategory: hr\n", encoding="utf-8"
    )
    ingest([corpus], tmp_path / "idx", cfg, embedder=embedder, defaults=DocMeta(access_level=1))
    leave = [c for c in chunks_of(tmp_path / "idx") if c.source.endswith("leave.txt")]
    assert leave and all((c.access_level, c.groups, c.category) == (2, ["hr"], "hr") for c in leave)
    others = [c for c in chunks_of(tmp_path / "idx") if not c.source.endswith("leave.txt")]
    assert all(c.access_level == 1 and c.groups == [] for c in others)


def bad_batch(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "good.md").write_text("# Good\n\nThis file is fine and about refunds.\n", encoding="utf-8")
    (d / "good2.txt").write_text("Another fine file about holidays.\n", encoding="utf-8")
    (d / "copy-of-good.md").write_text("# Good\n\nThis file is fine and about refunds.\n", encoding="utf-8")
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    (d / "locked.pdf").write_bytes(make_pdf_with_outline([["secret"]], [], password="pw"))
    (d / "empty.txt").write_bytes(b"")
    (d / "table.xlsx").write_bytes(b"PK\x03\x04")
    (d / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    (d / "latin1.txt").write_bytes("Résumé of the café policy".encode("latin-1"))
    (d / "huge.txt").write_text("word " * 60_000, encoding="utf-8")  # 300 kB, over a 0.1 MB limit
    return d


def test_bad_inputs_are_reported_and_the_rest_ingested(tmp_path, embedder):
    d = bad_batch(tmp_path / "docs")
    cfg = rag_config(ingest={"max_file_mb": 0.1})
    rep = ingest([d, tmp_path / "missing-folder"], tmp_path / "idx", cfg, embedder=embedder)
    r = reasons(rep)
    assert r["corrupt.pdf"].startswith("corrupt PDF")
    assert r["locked.pdf"].startswith("encrypted PDF")
    assert r["empty.txt"] == "empty file"
    assert r["table.xlsx"].startswith("unsupported file type '.xlsx'")
    assert r["image.txt"].startswith("binary content")
    assert r["latin1.txt"].startswith("not valid UTF-8")
    assert r["huge.txt"].startswith("file too large (0.3 MB > ingest.max_file_mb 0.1)")
    assert r["missing-folder"] == "not found"
    dup = [k for k in r if "duplicate of" in r[k]]
    assert len(dup) == 1 and dup[0] in ("good.md", "copy-of-good.md")
    assert rep.files_new == 2
    assert {Path(c.source).name for c in chunks_of(tmp_path / "idx")} == {"good2.txt"} | (
        {"good.md", "copy-of-good.md"} - set(dup))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading; see the simulated case below")
def test_unreadable_file_chmod(tmp_path, embedder, cfg):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.txt").write_text("readable text", encoding="utf-8")
    locked = d / "locked.txt"
    locked.write_text("secret", encoding="utf-8")
    locked.chmod(0)
    try:
        rep = ingest([d], tmp_path / "idx", cfg, embedder=embedder)
    finally:
        locked.chmod(0o644)
    assert reasons(rep)["locked.txt"].startswith("unreadable: Permission denied")
    assert rep.files_new == 1


def test_unreadable_file_simulated(tmp_path, embedder, cfg, monkeypatch):
    """The read failing (as for a permission error or an I/O error) is reported, not raised."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.txt").write_text("readable text", encoding="utf-8")
    (d / "locked.txt").write_text("secret", encoding="utf-8")
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    rep = ingest([d], tmp_path / "idx", cfg, embedder=embedder)
    assert reasons(rep) == {"locked.txt": "unreadable: Permission denied"}
    assert rep.files_new == 1


def test_a_directory_named_like_a_file_is_walked_not_read(tmp_path, embedder, cfg):
    d = tmp_path / "d"
    (d / "notes.txt").mkdir(parents=True)
    (d / "notes.txt" / "inner.md").write_text("# Inner\n\ntext\n", encoding="utf-8")
    rep = ingest([d], tmp_path / "idx", cfg, embedder=embedder)
    assert rep.skipped == [] and rep.files_new == 1


def test_incremental_reingest(corpus, tmp_path, cfg):
    idx = tmp_path / "idx"
    first = CountingEmbedder()
    ingest([corpus], idx, cfg, embedder=first)
    before = {c.id: c for c in chunks_of(idx)}
    version1 = Index.read_info(idx)["version"]

    again = CountingEmbedder()
    rep = ingest([corpus], idx, cfg, embedder=again)
    assert again.embedded == [] and rep.files_unchanged == 5 and rep.chunks_written == 0
    assert Index.read_info(idx)["version"] == version1

    # Change one passage of one file: only that file is re-chunked, only the changed passage embedded.
    text = (corpus / "policy.md").read_text(encoding="utf-8")
    (corpus / "policy.md").write_text(text.replace("gift cards", "vouchers"), encoding="utf-8")
    changed = CountingEmbedder()
    rep = ingest([corpus], idx, cfg, embedder=changed)
    assert rep.files_changed == 1 and rep.files_unchanged == 4
    assert len(changed.embedded) == 1 and "vouchers" in changed.embedded[0]
    after = chunks_of(idx)
    assert not any("gift cards" in c.text for c in after)
    assert Index.read_info(idx)["version"] != version1

    # Delete a file: its chunks leave the index, nothing is embedded.
    (corpus / "security.html").unlink()
    gone = CountingEmbedder()
    rep = ingest([corpus], idx, cfg, embedder=gone)
    assert gone.embedded == [] and rep.files_deleted == 1 and rep.chunks_deleted > 0
    left = chunks_of(idx)
    assert not any(c.source.endswith("security.html") for c in left)
    assert len(left) == len(before) - rep.chunks_deleted


def test_touched_file_and_metadata_change(corpus, tmp_path, cfg):
    idx = tmp_path / "idx"
    ingest([corpus], idx, cfg, embedder=CountingEmbedder())
    os.utime(corpus / "hr" / "leave.txt", (1, 1))  # mtime moved, bytes the same
    e = CountingEmbedder()
    rep = ingest([corpus], idx, cfg, embedder=e)
    assert e.embedded == [] and rep.files_changed == 0
    # A new sidecar changes access metadata: the file is rewritten, its vectors reused.
    (corpus / "hr" / "leave.meta.yaml").write_text("groups: [hr]\n", encoding="utf-8")
    e = CountingEmbedder()
    rep = ingest([corpus], idx, cfg, embedder=e)
    assert rep.files_changed == 1 and e.embedded == [] and rep.reused_vectors > 0
    assert all(c.groups == ["hr"] for c in chunks_of(idx) if c.source.endswith("leave.txt"))


def test_ingesting_a_subfolder_does_not_delete_the_rest(corpus, tmp_path, cfg):
    idx = tmp_path / "idx"
    ingest([corpus], idx, cfg, embedder=CountingEmbedder())
    n = len(chunks_of(idx))
    rep = ingest([corpus / "hr"], idx, cfg, embedder=CountingEmbedder())
    assert rep.files_deleted == 0 and len(chunks_of(idx)) == n


def test_killed_midway_leaves_a_consistent_index(corpus, tmp_path):
    cfg = rag_config(ingest={"batch_files": 1})
    idx = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        ingest([corpus], idx, cfg, embedder=CountingEmbedder(fail_after=2))
    partial = chunks_of_raw(idx)
    assert 0 < len({c.source for c in partial}) < 5  # two files committed, whole
    resumed = CountingEmbedder()
    rep = ingest([corpus], idx, cfg, embedder=resumed)
    assert rep.files_unchanged == 2 and rep.files_new == 3
    done = chunks_of(idx)
    assert len({c.source for c in done}) == 5
    reference = tmp_path / "ref"
    ingest([corpus], reference, cfg, embedder=CountingEmbedder())
    assert sorted(c.id for c in done) == sorted(c.id for c in chunks_of(reference))
    assert Index.read_info(idx)["content_hash"] == Index.read_info(reference)["content_hash"]


def chunks_of_raw(idx: Path):
    from llmtailor.rag.lancedb_store import LanceDBStore

    return LanceDBStore(idx / "lancedb", 384).fetch()


def test_version_record(corpus, tmp_path, cfg, embedder):
    ingest([corpus], tmp_path / "idx", cfg, embedder=embedder)
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert info["embedding"] == {"model": "hashing", "fingerprint": "hashing-crc32-384", "dim": 384}
    assert info["chunking"] == {"max_tokens": 40, "overlap_tokens": 8}
    assert info["store"]["backend"] == "lancedb"
    assert len(info["content_hash"]) == 16 and len(info["version"]) == 16
    assert info["sources"] == 5 and info["chunks"] > 5
    assert info["history"][-1]["new"] == 5
    # A different chunking config is a different version, and re-chunks every file.
    cfg2 = rag_config(chunking={"max_tokens": 60, "overlap_tokens": 0})
    rep = ingest([corpus], tmp_path / "idx", cfg2, embedder=CountingEmbedder())
    info2 = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert rep.files_changed == 5 and info2["version"] != info["version"] and len(info2["history"]) == 2


def test_missing_or_foreign_index_and_model_mismatch(tmp_path, corpus, cfg, embedder):
    with pytest.raises(TailorError, match="index not found; build it with `tailor rag ingest"):
        Index.open(tmp_path / "nope", cfg)
    (tmp_path / "plain").mkdir()
    with pytest.raises(TailorError, match="not an llmtailor index"):
        Index.open(tmp_path / "plain", cfg)
    ingest([corpus], tmp_path / "idx", cfg, embedder=embedder)
    with pytest.raises(TailorError, match="vectors would not be comparable"):
        ingest([corpus], tmp_path / "idx", cfg, embedder=CountingEmbedder(dim=128))
    # Without an explicit model, an update keeps the index's own model.
    from llmtailor.rag.config import RagConfig

    no_model = RagConfig.model_validate({"chunking": {"max_tokens": 40, "overlap_tokens": 8}})
    rep = ingest([corpus], tmp_path / "idx", no_model)
    assert rep.files_unchanged == 5
    # --rebuild starts over (and refuses folders that are not an index).
    rep = ingest([corpus], tmp_path / "idx", cfg, embedder=CountingEmbedder(dim=128), rebuild=True)
    assert rep.files_new == 5
    (tmp_path / "plain" / "precious.txt").write_text("x")
    with pytest.raises(TailorError, match="--rebuild refused"):
        ingest([corpus], tmp_path / "plain", cfg, embedder=embedder, rebuild=True)
    with pytest.raises(TailorError, match="nothing to ingest"):
        ingest([], tmp_path / "idx", cfg, embedder=embedder)


def test_records_ingest_and_removal(tmp_path, cfg, embedder):
    recs = [Record("1", "alpha text about wings", "Wings"), Record("2", "beta text about flutter", "Flutter"),
            Record("3", "", "")]
    rep = ingest_records(recs, tmp_path / "idx", cfg, prefix="beir:", embedder=embedder)
    assert rep.files_new == 2 and [s.reason for s in rep.skipped] == ["empty record"]
    rep = ingest_records(recs[:1], tmp_path / "idx", cfg, prefix="beir:", embedder=CountingEmbedder())
    assert rep.files_deleted == 1 and rep.files_unchanged == 1
    assert {c.source for c in chunks_of(tmp_path / "idx")} == {"beir:1"}
