"""Chunking: token budget, overlap, heading paths, pages, exact offsets, stable ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtailor.rag.chunk import Chunker, sections
from llmtailor.rag.embed import HashingEmbedder
from llmtailor.rag.loaders import ParsedDoc, load_markdown
from tests.unit.rag.conftest import POLICY_MD


def md(text: str, name: str = "doc.md") -> ParsedDoc:
    return load_markdown(text.encode("utf-8"), Path(name))


EMB = HashingEmbedder(64)


def long_section_doc() -> ParsedDoc:
    paras = []
    for p in range(6):
        sents = [f"Paragraph {p} sentence {s} talks about topic{p} and detail{s} at length." for s in range(5)]
        paras.append(" ".join(sents))
    return md("# Guide\n\n## Part A\n\n" + "\n\n".join(paras) + "\n\n## Part B\n\nShort closing words.\n")


def test_heading_paths_follow_the_outline():
    spans = Chunker(EMB, 200, 0).split(md(POLICY_MD))
    paths = [s.heading_path for s in spans]
    assert paths == ["Refund Policy", "Refund Policy > Refunds", "Refund Policy > Refunds > Exceptions"]
    assert "thirty days" in spans[0].text and "gift cards" in spans[2].text
    assert all("---" not in s.text and "category:" not in s.text for s in spans)  # front matter is not content


def test_sibling_headings_replace_each_other():
    doc = md("# A\n\none\n\n## B\n\ntwo\n\n## C\n\nthree\n\n# D\n\nfour\n")
    assert [p for _, _, p in sections(doc)] == [("A",), ("A", "B"), ("A", "C"), ("D",)]


@pytest.mark.parametrize("max_tokens,overlap", [(20, 0), (30, 8), (64, 16)])
def test_budget_offsets_and_section_boundaries(max_tokens, overlap):
    doc = long_section_doc()
    spans = Chunker(EMB, max_tokens, overlap).split(doc)
    assert len(spans) > 3
    bounds = sections(doc)
    for s in spans:
        assert s.text == doc.text[s.start : s.end]  # offsets are exact
        assert EMB.count_tokens([s.text])[0] <= max_tokens
        assert any(a <= s.start and s.end <= b for a, b, _ in bounds)  # never crosses a section
    covered = "".join(doc.text[s.start : s.end] for s in spans)
    for word in ("detail4", "topic5", "closing"):
        assert word in covered


def test_overlap_repeats_the_previous_sentences_within_a_section():
    doc = long_section_doc()
    spans = [s for s in Chunker(EMB, 40, 15).split(doc) if s.heading_path == "Guide > Part A"]
    assert len(spans) >= 3
    overlapped = sum(1 for a, b in zip(spans, spans[1:], strict=False) if b.start < a.end)
    assert overlapped >= len(spans) - 2
    no_overlap = [s for s in Chunker(EMB, 40, 0).split(doc) if s.heading_path == "Guide > Part A"]
    assert all(b.start >= a.end for a, b in zip(no_overlap, no_overlap[1:], strict=False))


def test_sentence_longer_than_budget_is_cut_at_token_boundaries():
    words = " ".join(f"w{i}" for i in range(95))
    doc = md(words)
    spans = Chunker(EMB, 30, 0).split(doc)
    assert [s.tokens for s in spans] == [30, 30, 30, 5]
    assert " ".join(s.text for s in spans) == words


def test_pages_are_kept():
    text = "page one words here\n\npage two words here"
    doc = ParsedDoc(text=text, file_type="pdf", pages=[(0, 1), (text.index("page two"), 2)])
    spans = Chunker(EMB, 4, 0).split(doc)
    assert [(s.page, s.page_end) for s in spans] == [(1, 1), (2, 2)]
    one = Chunker(EMB, 50, 0).split(doc)
    assert [(s.page, s.page_end) for s in one] == [(1, 2)]


def test_overlap_must_be_smaller_than_budget():
    with pytest.raises(ValueError):
        Chunker(EMB, 10, 10)
    from pydantic import ValidationError

    from llmtailor.rag.config import ChunkingConfig

    with pytest.raises(ValidationError):
        ChunkingConfig(max_tokens=32, overlap_tokens=40)


def test_chunk_ids_are_stable_and_content_derived(tmp_path, embedder):
    from llmtailor.rag.ingest import ingest
    from llmtailor.rag.lancedb_store import LanceDBStore
    from tests.unit.rag.conftest import rag_config

    d = tmp_path / "d"
    d.mkdir()
    (d / "a.md").write_text(POLICY_MD, encoding="utf-8")
    cfg = rag_config()
    ingest([d], tmp_path / "i1", cfg, embedder=embedder)
    ingest([d], tmp_path / "i2", cfg, embedder=embedder)
    ids1 = sorted(c.id for c in LanceDBStore(tmp_path / "i1" / "lancedb", 384).fetch())
    ids2 = sorted(c.id for c in LanceDBStore(tmp_path / "i2" / "lancedb", 384).fetch())
    assert ids1 == ids2 and len(set(ids1)) == len(ids1)
    (d / "a.md").write_text(POLICY_MD.replace("Sale items", "Clearance items"), encoding="utf-8")
    ingest([d], tmp_path / "i1", cfg, embedder=embedder)
    ids3 = sorted(c.id for c in LanceDBStore(tmp_path / "i1" / "lancedb", 384).fetch())
    assert len(set(ids1) - set(ids3)) == 1  # only the edited passage got a new id
