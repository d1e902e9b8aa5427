"""Fixtures for retrieval tests: the hashing embedder (instant, deterministic), file makers for every format.

PDFs are written by hand (a few objects and one text stream per page) and then given outlines or
passwords with pypdf, so no PDF library beyond the one the loader uses is needed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from llmtailor.rag.config import RagConfig
from llmtailor.rag.embed import HashingEmbedder


class CountingEmbedder(HashingEmbedder):
    """The hashing embedder, recording every passage it embeds (to check what an ingest re-embeds)."""

    def __init__(self, dim: int = 384, fail_after: int | None = None):
        super().__init__(dim)
        self.embedded: list[str] = []
        self.fail_after = fail_after  # raise on the call after this many embed() calls (a simulated crash)
        self.calls = 0

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.embedded.extend(texts)
        return super().embed(texts)


def rag_config(**overrides) -> RagConfig:
    """Defaults with the hashing embedder and small chunks (so short test documents still give several chunks)."""
    data = {
        "embedding": {"model": "hashing"},
        "chunking": {"max_tokens": 40, "overlap_tokens": 8},
    }
    for key, value in overrides.items():
        data.setdefault(key, {})
        data[key].update(value)
    return RagConfig.model_validate(data)


@pytest.fixture()
def cfg() -> RagConfig:
    return rag_config()


@pytest.fixture()
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]]) -> bytes:
    """A valid PDF with one Helvetica text line per list item, one list per page."""
    objects: list[bytes] = []
    n_pages = len(pages)
    page_ids = [4 + 2 * i for i in range(n_pages)]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        content_id = page_ids[i] + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {content_id} 0 R >>".encode()
        )
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
        for line in lines:
            ops.append(f"({_pdf_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def make_pdf_with_outline(pages: list[list[str]], outline: list[tuple[str, int]], title: str | None = None,
                          password: str | None = None) -> bytes:
    """make_pdf plus bookmarks (title, page index), an optional /Title and optional encryption."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(pages))))
    for name, page in outline:
        writer.add_outline_item(title=name, page_number=page)
    if title:
        writer.add_metadata({"/Title": title})
    if password:
        writer.encrypt(user_password=password, owner_password=password, algorithm="AES-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx(path: Path) -> Path:
    """A DOCX with a Title, two heading levels, paragraphs and a table."""
    import docx

    d = docx.Document()
    d.core_properties.title = "Travel Policy"
    d.add_paragraph("Travel Policy", style="Title")
    d.add_paragraph("Introduction to business travel rules.")
    d.add_heading("Booking", level=1)
    d.add_paragraph("Book flights through the travel portal at least two weeks ahead.")
    d.add_heading("Hotels", level=2)
    d.add_paragraph("Hotel rooms are capped at 150 euros per night.")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "City"
    table.cell(0, 1).text = "Cap"
    table.cell(1, 0).text = "Paris"
    table.cell(1, 1).text = "180"
    d.save(path)
    return path


POLICY_MD = """---
title: Refund Policy
category: finance
date: 2025-03-01
owner: ops
---
# Refund Policy

Customers may ask for a refund within thirty days of purchase.

## Refunds

Refunds are paid to the original payment card within fourteen days.

### Exceptions

Sale items and gift cards cannot be refunded.
"""


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """A small folder of good documents in every supported format."""
    d = tmp_path / "docs"
    (d / "hr").mkdir(parents=True)
    (d / "policy.md").write_text(POLICY_MD, encoding="utf-8")
    (d / "hr" / "leave.txt").write_text(
        "Employees get twenty-five days of paid holiday leave per year.\n\nUnused leave expires in March.\n",
        encoding="utf-8",
    )
    (d / "security.html").write_text(
        "<html><head><title>Security Guide</title><script>var x = 'tracking';</script></head><body>"
        "<h1>Security Guide</h1><p>Lock your laptop screen whenever you leave your desk.</p>"
        "<h2>Passwords</h2><p>Passwords must be at least fourteen characters long and never reused.</p>"
        "</body></html>",
        encoding="utf-8",
    )
    make_docx(d / "travel.docx")
    (d / "handbook.pdf").write_bytes(
        make_pdf_with_outline(
            [["Handbook", "Welcome to the company handbook."],
             ["Expenses", "Expense reports are due by the fifth working day of the month."]],
            [("Handbook", 0), ("Expenses", 1)],
            title="Employee Handbook",
        )
    )
    return d
