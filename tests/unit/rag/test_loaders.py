"""Readers: structure (title, headings, pages) from each format, and every bad file refused with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtailor.rag.loaders import SkipFile, decode_text, markdown_headings, parse_bytes, split_front_matter
from tests.unit.rag.conftest import POLICY_MD, make_docx, make_pdf, make_pdf_with_outline


def parse(path: Path):
    return parse_bytes(path.read_bytes(), path)


def test_markdown_front_matter_headings_and_title(tmp_path):
    p = tmp_path / "policy.md"
    p.write_text(POLICY_MD, encoding="utf-8")
    doc = parse(p)
    assert doc.file_type == "markdown"
    assert doc.title == "Refund Policy"
    assert doc.meta["category"] == "finance" and doc.meta["owner"] == "ops"
    assert doc.text[doc.body_start :].startswith("# Refund Policy")
    assert [(h.level, h.title) for h in doc.headings] == [(1, "Refund Policy"), (2, "Refunds"), (3, "Exceptions")]
    for h in doc.headings:
        assert doc.text[h.start : h.body_start].strip().lstrip("#").strip() == h.title


def test_markdown_headings_ignore_code_fences_and_find_setext():
    text = "Title\n=====\n\nbody\n\n```\n# not a heading\n```\n\nSub\n---\n\ntext\n"
    heads = markdown_headings(text)
    assert [(h.level, h.title) for h in heads] == [(1, "Title"), (2, "Sub")]


def test_bad_front_matter_is_reported_with_line():
    with pytest.raises(SkipFile, match="invalid YAML front matter line"):
        split_front_matter("---\ntitle: [unclosed\n---\nbody\n")
    with pytest.raises(SkipFile, match="mapping"):
        split_front_matter("---\n- a list\n---\nbody\n")


def test_html_keeps_headings_drops_scripts(corpus):
    doc = parse(corpus / "security.html")
    assert doc.file_type == "html"
    assert doc.title == "Security Guide"
    assert "tracking" not in doc.text
    assert "fourteen characters" in doc.text
    assert "Passwords" in [h.title for h in doc.headings]


def test_docx_title_headings_and_tables(tmp_path):
    doc = parse(make_docx(tmp_path / "t.docx"))
    assert doc.file_type == "docx"
    assert doc.title == "Travel Policy"
    assert [(h.level, h.title) for h in doc.headings][1:] == [(1, "Booking"), (2, "Hotels")]
    assert "Paris | 180" in doc.text
    for h in doc.headings:
        assert doc.text[h.start : h.start + len(h.title)] == h.title


def test_pdf_pages_outline_and_title(tmp_path):
    p = tmp_path / "h.pdf"
    p.write_bytes(make_pdf_with_outline([["Intro", "first page text"], ["Costs", "second page text"]],
                                        [("Intro", 0), ("Costs", 1)], title="Handbook"))
    doc = parse(p)
    assert doc.file_type == "pdf" and doc.title == "Handbook"
    assert [n for _, n in doc.pages] == [1, 2]
    assert doc.page_at(doc.text.index("first page")) == 1
    assert doc.page_at(doc.text.index("second page")) == 2
    assert [(h.level, h.title) for h in doc.headings] == [(1, "Intro"), (1, "Costs")]
    assert doc.text[doc.headings[1].start :].startswith("Costs")


def test_pdf_without_outline_uses_file_name(tmp_path):
    p = tmp_path / "plain.pdf"
    p.write_bytes(make_pdf([["only text here"]]))
    doc = parse(p)
    assert doc.title == "plain" and doc.headings == [] and "only text here" in doc.text


def test_encrypted_pdf_is_refused(tmp_path):
    p = tmp_path / "secret.pdf"
    p.write_bytes(make_pdf_with_outline([["classified"]], [], password="hunter2"))
    with pytest.raises(SkipFile, match="encrypted PDF"):
        parse(p)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n%%EOF garbage",
        b"not a pdf at all, just text",
        None,  # a real PDF cut in half
    ],
)
def test_corrupt_pdf_is_refused(tmp_path, data):
    if data is None:
        full = make_pdf([["some text on a page"]] * 3)
        data = full[: len(full) // 3]
    p = tmp_path / "broken.pdf"
    p.write_bytes(data)
    with pytest.raises(SkipFile, match=r"corrupt PDF|no extractable text"):
        parse(p)


def test_corrupt_docx_is_refused(tmp_path):
    p = tmp_path / "bad.docx"
    p.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(SkipFile, match="corrupt DOCX"):
        parse(p)


def test_binary_txt_non_utf8_and_empty(tmp_path):
    with pytest.raises(SkipFile, match="binary content"):
        decode_text(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(SkipFile, match="binary content"):
        decode_text(bytes(range(1, 32)) * 10)
    with pytest.raises(SkipFile, match=r"not valid UTF-8 \(byte 0xe9 at offset 3\)"):
        decode_text("café au lait".encode("latin-1"))
    p = tmp_path / "blank.txt"
    p.write_text("  \n\n ", encoding="utf-8")
    with pytest.raises(SkipFile, match="empty file"):
        parse(p)


def test_utf8_bom_and_utf16_are_text():
    assert decode_text("\ufeffhello".encode()) == "hello"
    assert decode_text("hello wörld".encode("utf-16")) == "hello wörld"


def test_unknown_extension_is_refused(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"whatever")
    with pytest.raises(SkipFile, match="unsupported file type '.xlsx'"):
        parse(p)
