"""Structure-aware chunking: headings first, then paragraphs, sentences, and token windows as a last resort.

A chunk never crosses a section boundary, so its heading path (`Policy > Refunds > Exceptions`) is
true for all its text. Sizes are measured with the embedding model's own tokenizer. A chunk's text is
always the exact slice `doc.text[char_start:char_end]`, so offsets can be shown and checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmtailor.rag.embed import Embedder
from llmtailor.rag.loaders import ParsedDoc

HEADING_SEP = " > "
_PARA = re.compile(r"\n[ \t]*\n\s*")


@dataclass
class Span:
    """A chunk before embedding: where it is and under which headings."""

    start: int
    end: int
    text: str
    headings: tuple[str, ...]
    page: int
    page_end: int
    tokens: int

    @property
    def heading_path(self) -> str:
        return HEADING_SEP.join(self.headings)


@dataclass
class _Piece:
    start: int
    end: int
    tokens: int


def sections(doc: ParsedDoc) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, heading path) of each section body, in order; text before the first heading has no path."""
    out: list[tuple[int, int, tuple[str, ...]]] = []
    stack: list[tuple[int, str]] = []
    heads = sorted((h for h in doc.headings if h.start >= doc.body_start), key=lambda h: h.start)
    cursor = doc.body_start
    path: tuple[str, ...] = ()
    for h in heads:
        if h.start > cursor:
            out.append((cursor, h.start, path))
        while stack and stack[-1][0] >= h.level:
            stack.pop()
        stack.append((h.level, h.title))
        path = tuple(t for _, t in stack)
        cursor = max(h.body_start, cursor)
    if len(doc.text) > cursor:
        out.append((cursor, len(doc.text), path))
    return out


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _paragraphs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    out = []
    pos = start
    for m in _PARA.finditer(text, start, end):
        s, e = _trim(text, pos, m.start())
        if e > s:
            out.append((s, e))
        pos = m.end()
    s, e = _trim(text, pos, end)
    if e > s:
        out.append((s, e))
    return out


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    import blingfire

    segment = text[start:end]
    _, offsets = blingfire.text_to_sentences_and_offsets(segment)
    spans = [(start + s, start + e) for s, e in offsets if e > s]
    if not spans:
        return [(start, end)]
    # blingfire drops whitespace between sentences; stretch each sentence to the next so nothing is lost.
    out = []
    for i, (s, _e) in enumerate(spans):
        nxt = spans[i + 1][0] if i + 1 < len(spans) else end
        s0 = start if i == 0 else s
        out.append(_trim(text, s0, nxt))
    return [(s, e) for s, e in out if e > s]


class Chunker:
    """Cuts a ParsedDoc into Spans of at most `max_tokens` with `overlap_tokens` carried over."""

    def __init__(self, embedder: Embedder, max_tokens: int = 200, overlap_tokens: int = 32):
        if overlap_tokens >= max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        self.embedder = embedder
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    def _count(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        return self.embedder.count_tokens([text[s:e] for s, e in spans])

    def _windows(self, text: str, start: int, end: int) -> list[_Piece]:
        """Cut one overlong sentence at token boundaries."""
        toks = self.embedder.token_spans(text[start:end])
        if not toks:
            return [_Piece(start, end, 0)]
        out = []
        for i in range(0, len(toks), self.max_tokens):
            window = toks[i : i + self.max_tokens]
            s = start + window[0][0]
            e = start + (toks[i + self.max_tokens][0] if i + self.max_tokens < len(toks) else len(text[start:end]))
            s, e = _trim(text, s, e)
            if e > s:
                out.append(_Piece(s, e, len(window)))
        return out

    def _pieces(self, text: str, start: int, end: int) -> list[_Piece]:
        """Paragraphs that fit; sentences of those that don't; token windows of sentences that still don't."""
        paras = _paragraphs(text, start, end)
        counts = self._count(text, paras)
        pieces: list[_Piece] = []
        for (s, e), n in zip(paras, counts, strict=True):
            if n <= self.max_tokens:
                pieces.append(_Piece(s, e, n))
                continue
            sents = _sentences(text, s, e)
            for (ss, se), sn in zip(sents, self._count(text, sents), strict=True):
                if sn <= self.max_tokens:
                    pieces.append(_Piece(ss, se, sn))
                else:
                    pieces.extend(self._windows(text, ss, se))
        return pieces

    def _overlap(self, text: str, window: list[_Piece]) -> _Piece | None:
        """Trailing sentences of the previous chunk, up to `overlap_tokens`."""
        if not self.overlap_tokens or not window:
            return None
        last = window[-1]
        sents = [(last.start, last.end)]
        if last.tokens > self.overlap_tokens:
            sents = _sentences(text, last.start, last.end)
        counts = self._count(text, sents)
        total, first = 0, None
        for (s, _e), n in zip(reversed(sents), reversed(counts), strict=True):
            if total + n > self.overlap_tokens:
                break
            total += n
            first = s
        if first is None or (first == window[0].start and len(window) == 1):
            return None
        return _Piece(first, last.end, total)

    def split(self, doc: ParsedDoc) -> list[Span]:
        """All chunks of a document, in order."""
        text = doc.text
        spans: list[Span] = []
        for start, end, path in sections(doc):
            pieces = self._pieces(text, start, end)
            window: list[_Piece] = []
            used = 0
            for piece in pieces:
                if window and used + piece.tokens > self.max_tokens:
                    spans.append(self._span(doc, window, used, path))
                    carry = self._overlap(text, window)
                    window, used = ([carry], carry.tokens) if carry else ([], 0)
                    if window and used + piece.tokens > self.max_tokens:
                        window, used = [], 0
                window.append(piece)
                used += piece.tokens
            if window:
                spans.append(self._span(doc, window, used, path))
        return spans

    @staticmethod
    def _span(doc: ParsedDoc, window: list[_Piece], tokens: int, path: tuple[str, ...]) -> Span:
        s, e = window[0].start, window[-1].end
        return Span(s, e, doc.text[s:e], path, doc.page_at(s), doc.page_at(max(s, e - 1)), tokens)
