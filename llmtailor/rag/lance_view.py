"""A LanceDB table version pinned for one search: the dense and BM25 rankings by id, then the winners' rows.

Each ranking runs on the version's in-memory snapshot (`lance_snapshot.Snapshot`) once a long-lived process has
built it, and in Lance (exact flat scan or IVF with the filter as SQL prefilter; full-text search with the filter as
prefilter) until then or when there is none. Either way the access filter is applied before top-k, and every row
read back is checked against it once more.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from llmtailor.rag.filters import Cmp, Filter, matches, to_sql
from llmtailor.rag.lance_snapshot import FTS_COLUMN, RESULT_COLUMNS, Snapshot
from llmtailor.rag.store import Chunk, Ranked

if TYPE_CHECKING:
    from llmtailor.rag.lancedb_store import LanceDBStore

log = logging.getLogger(__name__)


def in_list(column: str, values: list[str]) -> str | None:
    """SQL `column IN (...)` for a list of literal values."""
    return to_sql(Cmp(column, "in", tuple(values)))


class View:
    """One table version, pinned: rankings by id, then the winners' rows, all from that version."""

    def __init__(self, store: LanceDBStore, tbl: Any, version: int, key: tuple | None = None):
        self.store = store
        self.tbl = tbl
        self.version = version
        self.key = key
        self.rows = int(tbl.count_rows()) if tbl is not None else 0
        self.has_ivf = tbl is not None and any(ix.columns == ["vector"] for ix in tbl.list_indices())
        # The exact in-memory copy only below ann_min_rows (above it an IVF index answers) and never when empty.
        self.wants_memory = tbl is not None and 0 < self.rows < max(store.ann_min_rows, 1) and store.memory != "off"
        self.memory: Snapshot | None = None
        self.building = False
        self._build_lock = threading.Lock()

    def ensure_memory(self) -> Snapshot | None:
        """Build this version's in-memory snapshot (once; concurrent callers wait for the one build)."""
        if not self.wants_memory:
            return None
        with self._build_lock:
            if self.memory is None and not self.store._closed:
                try:
                    self.memory = Snapshot(self.tbl, self.store.dim, self.store.memory_rows, self.store.memory_bm25)
                except Exception as e:  # searches keep using Lance; a broken build must not break them
                    log.warning("in-memory snapshot of %s v%d not built: %s", self.store.path, self.version, e)
            return self.memory

    @property
    def in_memory(self) -> bool:
        """Whether both rankings run on the snapshot (numpy, a few milliseconds together at 100k chunks). They then
        run in the calling thread: on an idle 2-core machine two threads were faster (p95 8.6 against 10.9 ms,
        bench/results/retrieval_latency.md), but under load the two flipped, and a server's engine needs the core."""
        mem = self.memory
        return mem is not None and mem.bm25 is not None

    def dense(self, vector: np.ndarray, k: int, flt: Filter | None) -> list[Ranked]:
        if self.tbl is None or k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        mem = self.memory
        if mem is not None:
            return mem.search(query, k, flt)
        q = self.tbl.search(query, vector_column_name="vector").distance_type("cosine")
        if self.has_ivf and self.store.nprobes:
            q = q.nprobes(self.store.nprobes)
        where = to_sql(flt)
        if where:
            q = q.where(where, prefilter=True)
        data = q.with_row_id(True).select(["id", "_distance"]).limit(k).to_arrow()
        return [Ranked(i, 1.0 - float(d), int(r)) for i, d, r in
                zip(data["id"].to_pylist(), data["_distance"].to_pylist(), data["_rowid"].to_pylist(), strict=True)]

    def sparse(self, text: str, k: int, flt: Filter | None) -> list[Ranked]:
        if self.tbl is None or k <= 0 or not text.strip():
            return []
        mem = self.memory
        if mem is not None and mem.bm25 is not None:
            return mem.search_sparse(text, k, flt)
        q = self.tbl.search(text, query_type="fts", fts_columns=FTS_COLUMN)
        where = to_sql(flt)
        if where:
            q = q.where(where, prefilter=True)
        data = q.with_row_id(True).select(["id", "_score"]).limit(k).to_arrow()
        return [Ranked(i, float(s), int(r)) for i, s, r in
                zip(data["id"].to_pylist(), data["_score"].to_pylist(), data["_rowid"].to_pylist(), strict=True)]

    def chunks(self, ranked: list[Ranked], flt: Filter | None) -> dict[str, Chunk]:
        """The rows of these candidates in this version, each checked against `flt` once more."""
        if self.tbl is None or not ranked:
            return {}
        data: list[dict[str, Any]] = []
        mem = self.memory
        if mem is not None:
            data, ranked = mem.rows(ranked)
        rows = sorted({r.row for r in ranked if r.row is not None})
        if rows:
            data += self.tbl.take_row_ids(rows).select(RESULT_COLUMNS).to_arrow().to_pylist()
        loose = sorted({r.id for r in ranked if r.row is None})
        if loose:
            where = in_list("id", loose)
            if flt is not None:
                where = f"({where}) AND ({to_sql(flt)})"
            data += self.tbl.search().select(RESULT_COLUMNS).where(where).limit(None).to_arrow().to_pylist()
        out: dict[str, Chunk] = {}
        for row in data:
            if flt is not None and not matches(flt, row):
                # Both rankings already filtered inside the query; reaching here means a bug, never a leak.
                log.error("chunk %s does not match the search filter; dropped", row.get("id"))
                continue
            out[row["id"]] = Chunk.from_row(row)
        return out

    def vectors(self, ranked: list[Ranked]) -> dict[str, np.ndarray]:
        if self.tbl is None or not ranked:
            return {}
        mem = self.memory
        if mem is not None:
            return mem.vectors(ranked)
        rows = sorted({r.row for r in ranked if r.row is not None})
        out: dict[str, np.ndarray] = {}
        if rows:
            for row in self.tbl.take_row_ids(rows).select(["id", "vector"]).to_arrow().to_pylist():
                out[row["id"]] = np.asarray(row["vector"], dtype=np.float32)
        loose = [r.id for r in ranked if r.row is None and r.id not in out]
        if loose:
            out.update(self.store.vectors(loose))
        return out
