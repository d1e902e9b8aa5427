"""Qdrant backend: the scale-out store (a Qdrant server), same contract as LanceDB.

Dense vectors and BM25 sparse vectors (IDF applied by Qdrant) live in one collection; filters are
compiled to Qdrant `Filter`s and passed as `query_filter`, so top-k is taken among allowed points.
Without a URL it runs Qdrant's local mode in the index folder (tests, small demos; slow at scale).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError
from llmtailor.rag import sparse
from llmtailor.rag.filters import RANGE_TEXT_COLUMNS, And, Cmp, Filter, HasAny, IsEmpty, Not, Or
from llmtailor.rag.store import CHUNK_FIELDS, Chunk, Hit, SourceState

DENSE = "dense"
SPARSE = "bm25"
_STATE_FIELDS = ["source", "source_hash", "file_hash", "mtime", "size"]


def point_id(chunk_id: str) -> str:
    """Qdrant wants UUIDs or integers: a UUID derived from the chunk id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "llmtailor:" + chunk_id))


def to_qdrant(flt: Filter | None) -> Any:
    """Compile a filter tree to a Qdrant Filter (None = no filter)."""
    from qdrant_client import models as m

    def cond(f: Filter) -> Any:
        if isinstance(f, Cmp):
            if f.op == "=":
                return m.FieldCondition(key=f.column, match=m.MatchValue(value=f.value))
            if f.op == "!=":
                return m.Filter(must_not=[m.FieldCondition(key=f.column, match=m.MatchValue(value=f.value))])
            if f.op in ("in", "notin"):
                values = list(f.value)
                if not values:
                    # IN () matches nothing; NOT IN () matches everything.
                    empty = m.Filter(must=[m.HasIdCondition(has_id=[])])
                    return empty if f.op == "in" else m.Filter(must_not=[empty])
                c = m.FieldCondition(key=f.column, match=m.MatchAny(any=values))
                return c if f.op == "in" else m.Filter(must_not=[c])
            bound = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[f.op]
            if f.column in RANGE_TEXT_COLUMNS:
                return m.FieldCondition(key=f.column, range=m.DatetimeRange(**{bound: f.value}))
            return m.FieldCondition(key=f.column, range=m.Range(**{bound: f.value}))
        if isinstance(f, HasAny):
            if not f.values:
                return m.Filter(must=[m.HasIdCondition(has_id=[])])
            return m.FieldCondition(key=f.column, match=m.MatchAny(any=list(f.values)))
        if isinstance(f, IsEmpty):
            return m.IsEmptyCondition(is_empty=m.PayloadField(key=f.column))
        if isinstance(f, And):
            return m.Filter(must=[cond(p) for p in f.parts])
        if isinstance(f, Or):
            return m.Filter(should=[cond(p) for p in f.parts])
        if isinstance(f, Not):
            return m.Filter(must_not=[cond(f.part)])
        raise TypeError(f"not a filter: {f!r}")

    if flt is None:
        return None
    out = cond(flt)
    return out if isinstance(out, m.Filter) else m.Filter(must=[out])


class QdrantStore:
    """Chunks as points in one Qdrant collection (server at `url`, or local mode at `path` / in memory)."""

    def __init__(self, dim: int, collection: str = "llmtailor", *, url: str | None = None,
                 path: str | Path | None = None, api_key: str | None = None, client: Any = None):
        try:
            from qdrant_client import QdrantClient
        except ImportError as e:
            raise TailorError("the Qdrant backend needs qdrant-client: pip install 'llmtailor[qdrant]'") from e
        self.dim = dim
        self.collection = collection
        self.version = None
        if client is not None:
            self.client = client
        elif url:
            self.client = QdrantClient(url=url, api_key=api_key, timeout=30)
        elif path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(path))
        else:
            self.client = QdrantClient(location=":memory:")
        self._ensure()

    def _ensure(self) -> None:
        from qdrant_client import models as m

        try:
            exists = self.client.collection_exists(self.collection)
        except Exception as e:
            raise TailorError(f"Qdrant at {self.client}: cannot reach the server ({e})") from None
        if exists:
            info = self.client.get_collection(self.collection)
            vectors = info.config.params.vectors
            size = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
            if size != self.dim:
                raise TailorError(
                    f"Qdrant collection {self.collection!r} holds {size}-dimensional vectors, the model gives "
                    f"{self.dim}; use another collection or --rebuild"
                )
            return
        self.client.create_collection(
            self.collection,
            vectors_config={DENSE: m.VectorParams(size=self.dim, distance=m.Distance.COSINE)},
            sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
        )
        keyword = ["tenant", "groups", "source", "text_hash", "category", "file_type", "title", "heading_path"]
        for key in keyword:
            self._payload_index(key, m.PayloadSchemaType.KEYWORD)
        for key in ("access_level", "page", "chunk_index"):
            self._payload_index(key, m.PayloadSchemaType.INTEGER)
        self._payload_index("date", m.PayloadSchemaType.DATETIME)

    def _payload_index(self, key: str, schema: Any) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local mode warns that payload indexes are no-ops there
            try:
                self.client.create_payload_index(self.collection, key, field_schema=schema)
            except Exception:  # a server without the index still filters correctly, only slower
                pass

    # ------------------------------------------------------------------ writes
    def _point(self, c: Chunk) -> Any:
        from qdrant_client import models as m

        if c.vector is None or len(c.vector) != self.dim:
            raise TailorError(f"chunk {c.id} of {c.source} has no {self.dim}-dimensional vector")
        idx, val = sparse.doc_vector(c.search_text or c.text)
        payload = c.record()
        return m.PointStruct(
            id=point_id(c.id),
            vector={DENSE: np.asarray(c.vector, dtype=np.float32).tolist(), SPARSE: m.SparseVector(indices=idx,
                                                                                                   values=val)},
            payload=payload,
        )

    def _source_filter(self, sources: list[str]) -> Any:
        from qdrant_client import models as m

        return m.Filter(must=[m.FieldCondition(key="source", match=m.MatchAny(any=list(sources)))])

    def replace_sources(self, sources: list[str], chunks: list[Chunk]) -> None:
        """Upsert new points, then delete the sources' other points (a crash in between leaves both; the
        next ingest sees two source hashes for the source and redoes it)."""
        from qdrant_client import models as m

        if not sources:
            return
        stray = {c.source for c in chunks} - set(sources)
        if stray:
            raise ValueError(f"chunks of sources not being replaced: {sorted(stray)[:3]}")
        for i in range(0, len(chunks), 256):
            self.client.upsert(self.collection, [self._point(c) for c in chunks[i : i + 256]], wait=True)
        keep = [point_id(c.id) for c in chunks]
        flt = self._source_filter(sources)
        if keep:
            flt = m.Filter(must=flt.must, must_not=[m.HasIdCondition(has_id=keep)])
        self.client.delete(self.collection, points_selector=m.FilterSelector(filter=flt), wait=True)

    def delete_sources(self, sources: list[str]) -> int:
        from qdrant_client import models as m

        if not sources:
            return 0
        flt = self._source_filter(sources)
        n = self.client.count(self.collection, count_filter=flt, exact=True).count
        if n:
            self.client.delete(self.collection, points_selector=m.FilterSelector(filter=flt), wait=True)
        return int(n)

    def optimize(self) -> None:
        """Qdrant maintains its indexes itself."""

    # ------------------------------------------------------------------ reads
    def _scroll(self, flt: Any, fields: list[str] | bool, with_vectors: Any = False, limit: int | None = None):
        offset = None
        got = 0
        while True:
            page = 1024 if limit is None else min(1024, limit - got)
            if page <= 0:
                return
            points, offset = self.client.scroll(
                self.collection, scroll_filter=flt, limit=page, offset=offset, with_payload=fields,
                with_vectors=with_vectors,
            )
            yield from points
            got += len(points)
            if offset is None:
                return

    def source_states(self) -> dict[str, SourceState]:
        states: dict[str, SourceState] = {}
        for p in self._scroll(None, _STATE_FIELDS):
            d = p.payload or {}
            src = d["source"]
            st = states.get(src)
            if st is None:
                states[src] = SourceState(src, {d["source_hash"]}, d["file_hash"], d["mtime"], d["size"], 1)
            else:
                st.source_hashes.add(d["source_hash"])
                st.chunks += 1
        return states

    def vectors_for_text(self, text_hashes: list[str]) -> dict[str, np.ndarray]:
        from qdrant_client import models as m

        out: dict[str, np.ndarray] = {}
        uniq = sorted(set(text_hashes))
        for i in range(0, len(uniq), 512):
            flt = m.Filter(must=[m.FieldCondition(key="text_hash", match=m.MatchAny(any=uniq[i : i + 512]))])
            for p in self._scroll(flt, ["text_hash"], with_vectors=[DENSE]):
                out[p.payload["text_hash"]] = np.asarray(p.vector[DENSE], dtype=np.float32)
        return out

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        points = self.client.retrieve(self.collection, [point_id(i) for i in set(ids)], with_payload=["id"],
                                      with_vectors=[DENSE])
        return {p.payload["id"]: np.asarray(p.vector[DENSE], dtype=np.float32) for p in points}

    def fetch(self, flt: Filter | None = None, limit: int | None = None) -> list[Chunk]:
        return [self._chunk(p.payload) for p in self._scroll(to_qdrant(flt), True, limit=limit)]

    @staticmethod
    def _chunk(payload: dict[str, Any]) -> Chunk:
        row = {k: payload.get(k) for k in CHUNK_FIELDS if k in payload}
        return Chunk.from_row(row)

    def count(self, flt: Filter | None = None) -> int:
        return int(self.client.count(self.collection, count_filter=to_qdrant(flt), exact=True).count)

    def search_dense(self, vector: np.ndarray, k: int, flt: Filter | None) -> list[Hit]:
        if k <= 0:
            return []
        res = self.client.query_points(
            self.collection, query=np.asarray(vector, dtype=np.float32).tolist(), using=DENSE,
            query_filter=to_qdrant(flt), limit=k, with_payload=True,
        )
        return [
            Hit(self._chunk(p.payload), score=float(p.score), dense=float(p.score), rank_dense=r)
            for r, p in enumerate(res.points, start=1)
        ]

    def search_sparse(self, text: str, k: int, flt: Filter | None) -> list[Hit]:
        from qdrant_client import models as m

        idx, val = sparse.query_vector(text)
        if k <= 0 or not idx:
            return []
        res = self.client.query_points(
            self.collection, query=m.SparseVector(indices=idx, values=val), using=SPARSE,
            query_filter=to_qdrant(flt), limit=k, with_payload=True,
        )
        return [
            Hit(self._chunk(p.payload), score=float(p.score), sparse=float(p.score), rank_sparse=r)
            for r, p in enumerate(res.points, start=1)
            if p.score > 0
        ]

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
