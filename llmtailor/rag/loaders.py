"""File readers: PDF, DOCX, HTML, Markdown and plain text -> text + structure (title, headings, pages).

Each reader returns a `ParsedDoc` or raises `SkipFile` with a reason a person can act on; the
ingest reports it and carries on with the rest of the batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
}

# Formats whose reader returns metadata found inside the file (front matter): ingest parses these before it decides
# anything that depends on a document's access scope (de-duplication), the others only when their text is needed.
META_TYPES = frozenset({"markdown"})


class SkipFile(Exception):
    """This file cannot be ingested; the message says why."""


class Refused(SkipFile):
    """Skipped for an access reason (a link out of the folder, metadata that would widen who sees it): unlike a
    broken file, which keeps its last good version, whatever the index still holds for it is removed."""


@dataclass
class Heading:
    """A heading at `start` in the text; its section body begins at `body_start`."""

    start: int
    body_start: int
    level: int
    title: str


@dataclass
class ParsedDoc:
    """Extracted text plus structure; all offsets index `text`."""

    text: str
    title: str = ""
    file_type: str = "text"
    headings: list[Heading] = field(default_factory=list)
    pages: list[tuple[int, int]] = field(default_factory=list)  # (start offset, 1-based page number)
    body_start: int = 0  # text before this (front matter) is not content
    meta: dict[str, Any] = field(default_factory=dict)  # metadata found inside the file (front matter)

    def page_at(self, offset: int) -> int:
        """Page containing `offset` (0 when the format has no pages)."""
        page = 0
        for start, number in self.pages:
            if start > offset:
                break
            page = number
        return page


def file_type(path: Path) -> str | None:
    """Our reader for this file name, or None if unsupported."""
    return SUPPORTED.get(path.suffix.lower())


# ---------------------------------------------------------------- text decoding


def decode_text(data: bytes, what: str = "text file") -> str:
    """Strict UTF-8 (BOM allowed, UTF-16 with BOM accepted); binary content and other encodings are refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise SkipFile(f"invalid UTF-16 {what}: {e.reason} at byte {e.start}") from None
    if b"\x00" in data[:65536]:
        raise SkipFile(f"binary content in a {what} (NUL bytes); not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise SkipFile(
            f"not valid UTF-8 (byte 0x{bad} at offset {e.start}); re-save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None
    sample = text[:65536]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    if sample and controls / len(sample) > 0.05:
        raise SkipFile(f"binary content in a {what} ({controls} control characters in the first {len(sample)})")
    return text


# ---------------------------------------------------------------- markdown / text

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$|^ {0,3}(#{1,6})[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def split_front_matter(text: str, source: str = "") -> tuple[dict[str, Any], int]:
    """YAML front matter between leading '---' lines -> (metadata, offset where the body starts)."""
    if not text.startswith("---"):
        return {}, 0
    m = re.match(r"---[ \t]*\r?\n(.*?\r?\n)?(?:---|\.\.\.)[ \t]*(?:\r?\n|$)", text, re.S)
    if not m:
        return {}, 0
    try:
        meta = yaml.safe_load(m.group(1) or "") or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 2}" if mark else ""
        raise SkipFile(f"invalid YAML front matter{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(meta, dict):
        raise SkipFile("front matter must be a YAML mapping (key: value lines)")
    return meta, m.end()


def markdown_headings(text: str, start: int = 0) -> list[Heading]:
    """ATX (#) and setext (=== / --- under a one-line paragraph) headings outside fenced code blocks."""
    headings: list[Heading] = []
    fence: str | None = None
    pos = start
    para_lines = 0
    first: tuple[int, str] = (0, "")  # start offset and text of the current paragraph's first line
    for line in text[start:].splitlines(keepends=True):
        line_start, line_end = pos, pos + len(line)
        pos = line_end
        stripped = line.rstrip("\r\n")
        fm = _FENCE.match(stripped)
        if fence is not None:
            if fm and fm.group(1)[0] == fence[0] and len(fm.group(1)) >= len(fence):
                fence = None
            continue
        if fm:
            fence = fm.group(1)
            para_lines = 0
            continue
        m = _ATX.match(stripped)
        if m:
            title = (m.group(2) or "").strip()
            if title:
                headings.append(Heading(line_start, line_end, len(m.group(1) or m.group(3)), title))
            para_lines = 0
        elif _SETEXT.match(stripped) and para_lines == 1:
            level = 1 if stripped.strip()[0] == "=" else 2
            headings.append(Heading(first[0], line_end, level, first[1].strip()))
            para_lines = 0
        elif not stripped.strip() or _SETEXT.match(stripped):
            para_lines = 0
        else:
            if para_lines == 0:
                first = (line_start, stripped)
            para_lines += 1
    return headings


def load_markdown(data: bytes, path: Path) -> ParsedDoc:
    text = decode_text(data, "Markdown file")
    meta, body = split_front_matter(text, str(path))
    headings = markdown_headings(text, body)
    title = str(meta.get("title") or "") or next((h.title for h in headings if h.level == 1), "") or path.stem
    return ParsedDoc(text=text, title=title, file_type="markdown", headings=headings, body_start=body, meta=meta)


def load_text(data: bytes, path: Path) -> ParsedDoc:
    text = decode_text(data, "text file")
    return ParsedDoc(text=text, title=path.stem, file_type="text")


# ---------------------------------------------------------------- HTML


def load_html(data: bytes, path: Path) -> ParsedDoc:
    """Main content via trafilatura (boilerplate removed) as Markdown, so headings survive."""
    import trafilatura

    if b"\x00" in data[:65536]:
        raise SkipFile("binary content in an HTML file (NUL bytes)")
    try:
        body = trafilatura.extract(
            data, output_format="markdown", include_formatting=True, include_links=False, include_images=False,
            include_comments=False, favor_recall=True, with_metadata=False,
        )
        meta = trafilatura.extract_metadata(data)
    except Exception as e:  # trafilatura wraps lxml errors inconsistently
        raise SkipFile(f"unparseable HTML: {e}") from None
    if not body or not body.strip():
        body = _html_text_fallback(data)
    title = (getattr(meta, "title", None) or "") if meta else ""
    headings = markdown_headings(body)
    title = title or next((h.title for h in headings if h.level == 1), "") or path.stem
    return ParsedDoc(text=body, title=title, file_type="html", headings=headings)


def _html_text_fallback(data: bytes) -> str:
    import lxml.html

    try:
        tree = lxml.html.fromstring(data)
    except Exception as e:
        raise SkipFile(f"unparseable HTML: {e}") from None
    for bad in tree.xpath("//script|//style|//noscript"):
        bad.drop_tree()
    return re.sub(r"\n\s*\n+", "\n\n", tree.text_content()).strip()


# ---------------------------------------------------------------- PDF


def load_pdf(data: bytes, path: Path) -> ParsedDoc:
    """Text per page (pypdf); headings from the PDF outline (bookmarks), located in the page text."""
    import io
    import logging

    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise SkipFile("corrupt PDF: no %PDF header (not a PDF file?)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception:
                ok = 0
            if not ok:
                raise SkipFile("encrypted PDF (password protected); decrypt it first (e.g. qpdf --decrypt)")
        parts: list[str] = []
        pages: list[tuple[int, int]] = []
        offset = 0
        for number, page in enumerate(reader.pages, start=1):
            page_text = (page.extract_text() or "").strip()
            pages.append((offset, number))
            parts.append(page_text)
            offset += len(page_text) + 2
        text = "\n\n".join(parts)
        outline = _pdf_outline(reader)
        title = ""
        try:
            if reader.metadata and reader.metadata.title:
                title = str(reader.metadata.title).strip()
        except Exception:
            title = ""
    except SkipFile:
        raise
    except FileNotDecryptedError:
        raise SkipFile("encrypted PDF (password protected); decrypt it first (e.g. qpdf --decrypt)") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as e:
        raise SkipFile(f"corrupt PDF: {e}") from None
    except Exception as e:  # pypdf raises assorted errors on damaged files
        raise SkipFile(f"corrupt PDF: {type(e).__name__}: {e}") from None
    if not text.strip():
        raise SkipFile("no extractable text (a scanned PDF? run OCR first)")
    headings = _locate_outline(text, pages, outline)
    doc = ParsedDoc(text=text, title=title or (outline[0][2] if outline else "") or path.stem, file_type="pdf",
                    headings=headings, pages=pages)
    return doc


def _pdf_outline(reader: Any) -> list[tuple[int, int, str]]:
    """(page index, level, title) for each bookmark, in document order."""
    out: list[tuple[int, int, str]] = []

    def walk(items: Any, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
                title = str(item.title).strip()
            except Exception:
                continue
            if title and page is not None and page >= 0:
                out.append((page, level, title))

    try:
        walk(reader.outline, 1)
    except Exception:
        return []
    return out


def _locate_outline(text: str, pages: list[tuple[int, int]], outline: list[tuple[int, int, str]]) -> list[Heading]:
    headings: list[Heading] = []
    cursor = 0
    for page_index, level, title in outline:
        if page_index >= len(pages):
            continue
        page_start = pages[page_index][0]
        page_end = pages[page_index + 1][0] if page_index + 1 < len(pages) else len(text)
        search_from = max(page_start, cursor)
        pos = text.find(title, search_from, page_end)
        if pos < 0:
            pos = text.lower().find(title.lower(), search_from, page_end)
        if pos >= 0:
            line_end = text.find("\n", pos)
            body = len(text) if line_end < 0 else line_end + 1
            headings.append(Heading(pos, body, level, title))
            cursor = body
        else:
            start = max(page_start, cursor)
            headings.append(Heading(start, start, level, title))
            cursor = start
    return headings


# ---------------------------------------------------------------- DOCX


def load_docx(data: bytes, path: Path) -> ParsedDoc:
    """Paragraphs and tables in document order; 'Heading N' / 'Title' styles become headings."""
    import io
    import zipfile

    import docx
    from docx.document import Document as DocxDocument
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document: DocxDocument = docx.Document(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SkipFile("corrupt DOCX: not a ZIP container") from None
    except Exception as e:
        raise SkipFile(f"corrupt DOCX: {type(e).__name__}: {e}") from None
    parts: list[str] = []
    headings: list[Heading] = []
    offset = 0
    doc_title = ""

    def add(block: str) -> int:
        nonlocal offset
        start = offset
        parts.append(block)
        offset += len(block) + 2
        return start

    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            text = item.text.strip()
            if not text:
                continue
            style = (item.style.name if item.style is not None else "") or ""
            level = _docx_heading_level(style)
            start = add(text)
            if level is not None:
                if level == 0 and not doc_title:
                    doc_title = text
                headings.append(Heading(start, start + len(text) + 2, max(level, 1), text))
        elif isinstance(item, Table):
            rows = []
            for row in item.rows:
                cells = [c.text.strip() for c in row.cells]
                if any(cells):
                    rows.append(" | ".join(cells))
            if rows:
                add("\n".join(rows))
    text = "\n\n".join(parts)
    if not text.strip():
        raise SkipFile("no text in the DOCX")
    title = (document.core_properties.title or "").strip() or doc_title
    title = title or next((h.title for h in headings), "") or path.stem
    return ParsedDoc(text=text, title=title, file_type="docx", headings=headings)


def _docx_heading_level(style: str) -> int | None:
    if style == "Title":
        return 0
    m = re.match(r"Heading (\d)$", style)
    return int(m.group(1)) if m else None


LOADERS = {
    "pdf": load_pdf,
    "docx": load_docx,
    "html": load_html,
    "markdown": load_markdown,
    "text": load_text,
}


def parse_bytes(data: bytes, path: Path) -> ParsedDoc:
    """Parse already-read file bytes with the reader for the file's extension."""
    kind = file_type(path)
    if kind is None:
        raise SkipFile(f"unsupported file type '{path.suffix or '(none)'}' (supported: {', '.join(sorted(SUPPORTED))})")
    if not data.strip():
        raise SkipFile("empty file")
    return LOADERS[kind](data, path)
