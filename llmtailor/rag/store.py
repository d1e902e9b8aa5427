"""The chunk store contract: what every backend (LanceDB embedded, Qdrant server) must do.

Backends differ in where vectors live; they must agree on semantics, which `tests/contract/` checks
by running one suite on each: the same filters (compiled from `filters.Filter`), replace-by-source
writes, and search that applies the filter before taking top-k.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmtailor.rag.filters import Filter

# Columns every backend stores besides the vector, in a fixed order (also the JSON output order).
CHUNK_FIELDS = (
    "id", "source", "source_hash", "file_hash", "mtime", "size", "title", "heading_path", "page", "page_end",
    "char_start", "char_end", "chunk_index", "text", "search_text", "text_hash", "tenant", "access_level", "groups",
    "category", "date", "file_type", "meta",
)


@dataclass
class Chunk:
    """One retrievable passage with its provenance and access-control metadata.

    `page` is 1-based (0 = the format has no pages); `char_start`/`char_end` index the document's
    extracted text; `search_text` (title, heading path, text) is what is embedded and BM25-indexed.
    """

    id: str
    source: str
    text: str
    search_text: str = ""
    text_hash: str = ""
    source_hash: str = ""
    file_hash: str = ""
    mtime: float = 0.0
    size: int = 0
    title: str = ""
    heading_path: str = ""
    page: int = 0
    page_end: int = 0
    char_start: int = 0
    char_end: int = 0
    chunk_index: int = 0
    tenant: str = ""
    access_level: int = 0
    groups: list[str] = field(default_factory=list)
    category: str = ""
    date: str = ""
    file_type: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """Plain metadata dict (no vector), as filters and JSON output see it."""
        d = asdict(self)
        d.pop("vector", None)
        return d

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Chunk:
        """Build from a stored row (meta may be a JSON string; extra keys like scores ignored)."""
        kwargs = {k: row[k] for k in CHUNK_FIELDS if k in row and row[k] is not None}
        if isinstance(kwargs.get("meta"), str):
            kwargs["meta"] = json.loads(kwargs["meta"]) if kwargs["meta"] else {}
        if "groups" in kwargs:
            kwargs["groups"] = list(kwargs["groups"])
        vec = row.get("vector")
        if vec is not None:
            kwargs["vector"] = np.asarray(vec, dtype=np.float32)
        return cls(**kwargs)


@dataclass
class Hit:
    """A search result: the chunk plus the scores that put it there."""

    chunk: Chunk
    score: float
    dense: float | None = None  # cosine similarity to the query
    sparse: float | None = None  # BM25 score
    rank_dense: int | None = None
    rank_sparse: int | None = None
    rerank: float | None = None  # cross-encoder score, when a reranker ran

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready result (text and provenance, no vectors, no internal hashes)."""
        c = self.chunk
        return {
            "id": c.id,
            "score": round(float(self.score), 6),
            "dense": None if self.dense is None else round(float(self.dense), 6),
            "sparse": None if self.sparse is None else round(float(self.sparse), 6),
            "rerank": None if self.rerank is None else round(float(self.rerank), 6),
            "source": c.source,
            "title": c.title,
            "heading_path": c.heading_path,
            "page": c.page or None,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "tenant": c.tenant,
            "access_level": c.access_level,
            "groups": list(c.groups),
            "category": c.category,
            "date": c.date,
            "text": c.text,
        }


@dataclass
class Ranked:
    """One candidate of one ranking, before its chunk is read: chunk id, score, and where the row is.

    `row` is a backend row address valid only inside the `ReadView` that produced it (LanceDB: the row id in
    that table version); None when the backend has none.
    """

    id: str
    score: float
    row: int | None = None


@runtime_checkable
class ReadView(Protocol):
    """One consistent version of a store, for one search: rank ids first, read chunks only for the winners.

    A backend that has it (LanceDB) lets a hybrid search rank 2 x 50 candidates by id and read the text of the
    top-k only. Every method applies `flt` itself, before top-k, as `search_dense`/`search_sparse` do; `chunks`
    applies it again to what it reads.
    """

    version: int

    def dense(self, vector: np.ndarray, k: int, flt: Filter | None) -> list[Ranked]:
        ...

    def sparse(self, text: str, k: int, flt: Filter | None) -> list[Ranked]:
        ...

    def chunks(self, ranked: list[Ranked], flt: Filter | None) -> dict[str, Chunk]:
        """Chunks of these candidates that exist in this version and match `flt`, keyed by id."""
        ...

    def vectors(self, ranked: list[Ranked]) -> dict[str, np.ndarray]:
        ...


@dataclass
class SourceState:
    """What the store holds for one source file (to decide what an ingest must redo)."""

    source: str
    source_hashes: set[str]
    file_hash: str
    mtime: float
    size: int
    chunks: int


@runtime_checkable
class ChunkStore(Protocol):
    """Storage + filtered search. Every filter is applied inside the query, before top-k."""

    dim: int

    def replace_sources(self, sources: list[str], chunks: list[Chunk]) -> None:
        """Make `chunks` the only chunks of `sources` (atomically where the backend allows)."""
        ...

    def delete_sources(self, sources: list[str]) -> int:
        """Remove every chunk of these sources; return how many were removed."""
        ...

    def source_states(self) -> dict[str, SourceState]:
        """Per-source hashes and counts, read from the store itself (the truth after a crash)."""
        ...

    def vectors_for_text(self, text_hashes: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors keyed by text hash, so unchanged passages are never embedded twice."""
        ...

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors of these chunk ids."""
        ...

    def search_dense(self, vector: np.ndarray, k: int, flt: Filter | None) -> list[Hit]:
        """Top-k by cosine similarity among chunks matching `flt`."""
        ...

    def search_sparse(self, text: str, k: int, flt: Filter | None) -> list[Hit]:
        """Top-k by BM25 among chunks matching `flt`."""
        ...

    def fetch(self, flt: Filter | None = None, limit: int | None = None) -> list[Chunk]:
        """Chunks matching `flt` (no ranking), without vectors."""
        ...

    def count(self, flt: Filter | None = None) -> int:
        """Number of chunks matching `flt`."""
        ...

    def optimize(self) -> None:
        """Bring indexes up to date after writes (search is correct without it, only slower)."""
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...
