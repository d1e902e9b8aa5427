"""LanceDB backend: the embedded default, files in the index folder, no server.

Writes are single Lance commits (`merge_insert` that also deletes a source's stale rows), so a killed
ingest leaves each source either fully old or fully new. BM25 (Lance full-text search) queries get the
filter as a SQL prefilter, so top-k is taken among allowed chunks only.

Reads always see the latest commit, including one made by another process: every search first asks Lance for
the latest version (about 0.1 ms) and then runs entirely on a `View`, a table handle pinned to that version,
so the dense ranking, the BM25 ranking and the rows read back all come from one consistent version.

Below `ann_min_rows` chunks a view can hold an in-memory snapshot of its version (`lance_snapshot.Snapshot`):
exact dense search and BM25 (tokenised like the FTS index) with the access filter as a mask before top-k, and the
result rows. It belongs to one version and dies with it: a commit by anyone makes the next search open a new view,
so a stale snapshot is never searched. Building it reads the whole table (seconds per 100k chunks on 2 busy
cores), so a process that searches once (`tailor rag query`) never builds it and uses Lance (exact flat scan and
full-text search, each with the filter as SQL prefilter); a long-lived one (a server, an evaluation) builds it in
the background from its second search on and uses Lance until it is ready (`memory="auto"`). At or above
`ann_min_rows` an IVF index is built and Lance answers with the SQL prefilter.

Modules: this one holds the table I/O (schema, writes, indexes, plain reads); `lance_view` the pinned version a
search runs on (rankings by id, then the winners' rows, re-checked against the filter); `lance_snapshot` the
in-memory copy.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError
from llmtailor.rag.filters import Filter, to_sql
from llmtailor.rag.lance_view import View, in_list
from llmtailor.rag.store import CHUNK_FIELDS, Chunk, Hit, SourceState

_SCALAR_INDEXES = (
    ("tenant", "BITMAP"),
    ("access_level", "BTREE"),
    ("groups", "LABEL_LIST"),
    ("groups_empty", "BITMAP"),
    ("source", "BTREE"),
    ("text_hash", "BTREE"),
    ("id", "BTREE"),
)
MEMORY_MODES = ("auto", "eager", "off")


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("source_hash", pa.string()),
            ("file_hash", pa.string()),
            ("mtime", pa.float64()),
            ("size", pa.int64()),
            ("title", pa.string()),
            ("heading_path", pa.string()),
            ("page", pa.int32()),
            ("page_end", pa.int32()),
            ("char_start", pa.int64()),
            ("char_end", pa.int64()),
            ("chunk_index", pa.int32()),
            ("text", pa.string()),
            ("search_text", pa.string()),
            ("text_hash", pa.string()),
            ("tenant", pa.string()),
            ("access_level", pa.int32()),
            ("groups", pa.list_(pa.string())),
            ("category", pa.string()),
            ("date", pa.string()),
            ("file_type", pa.string()),
            ("meta", pa.string()),
            # groups == [] as an indexed flag: `array_length(groups) = 0` cannot use an index and made
            # every ACL-filtered BM25 query scan the table (4x slower at 100k chunks).
            ("groups_empty", pa.bool_()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


class LanceDBStore:
    """Chunks in one Lance table under `path` (usually `<index>/lancedb`).

    `memory`: "auto" (build the in-memory exact dense index in the background from a handle's second search
    on), "eager" (build it, synchronously, on the first search of every version) or "off" (always Lance).
    `memory_rows`: the in-memory copy also holds text and metadata (the rows of a search's results are then read
    from memory: about 6 ms of CPU less per search at 100k chunks, about 130 MB more per 100k chunks).
    `memory_bm25`: the in-memory copy also holds BM25 postings, and the BM25 leg runs there instead of in Lance's
    full-text search (bench/results/retrieval_latency.md).
    `nprobes`: IVF partitions probed per query once an IVF index exists (None = Lance's default, 20). 60 is the
    default: with the access filter as prefilter at 100k chunks, dense recall@5 against exact search was 0.907 with
    20 and 1.0 with 60, at the same latency (bench/results/retrieval_latency.md).
    """

    def __init__(self, path: str | Path, dim: int, collection: str = "llmtailor", ann_min_rows: int = 250_000,
                 memory: str = "auto", nprobes: int | None = 60, memory_rows: bool = True, memory_bm25: bool = True):
        from llmtailor.rag.lance_import import import_lancedb

        lancedb = import_lancedb()
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        self.path = Path(path)
        self.dim = dim
        self.collection = collection
        self.ann_min_rows = ann_min_rows
        self.memory = memory
        self.memory_rows = memory_rows
        self.memory_bm25 = memory_bm25
        self.nprobes = nprobes
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(str(self.path))
        self._schema = _schema(dim)
        self._head_lock = threading.Lock()
        self._view_lock = threading.Lock()
        self._tbl = self._open()
        self._view: View | None = None
        self._searches = 0
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def _open(self):
        if self.collection not in self._db.list_tables().tables:
            return None
        tbl = self._db.open_table(self.collection)
        if "groups_empty" not in tbl.schema.names:
            raise TailorError(f"{self.path}: index written by an older llmtailor; rebuild it (ingest --rebuild)")
        field = tbl.schema.field("vector")
        stored = field.type.list_size
        if stored != self.dim:
            raise TailorError(
                f"{self.path}: the index holds {stored}-dimensional vectors but the embedding model gives {self.dim}; "
                "use the model the index was built with, or rebuild the index (--rebuild)"
            )
        return tbl

    def _table(self, create: bool = False):
        if self._tbl is None and create:
            self._tbl = self._db.create_table(self.collection, schema=self._schema, exist_ok=True)
        return self._tbl

    def _fresh(self):
        """The table at its latest committed version, whoever committed it (None while there is no table)."""
        with self._head_lock:
            tbl = self._tbl
            if tbl is None:
                self._tbl = tbl = self._open()  # another process may have created it since
                return tbl
            try:
                tbl.checkout_latest()
            except Exception:  # the table was dropped or rebuilt under us: open what is there now
                self._tbl = tbl = self._open()
            return tbl

    @property
    def version(self) -> int:
        """Latest Lance table version (each commit adds one); 0 before the first write."""
        tbl = self._fresh()
        return 0 if tbl is None else int(tbl.version)

    def _arrow(self, chunks: list[Chunk]):
        import pyarrow as pa

        cols: dict[str, list[Any]] = {name: [] for name in self._schema.names}
        for c in chunks:
            if c.vector is None or len(c.vector) != self.dim:
                raise TailorError(f"chunk {c.id} of {c.source} has no {self.dim}-dimensional vector")
            rec = c.record()
            for name in self._schema.names:
                if name == "vector":
                    continue
                if name == "groups_empty":
                    cols[name].append(not rec["groups"])
                    continue
                cols[name].append(json.dumps(rec["meta"], sort_keys=True) if name == "meta" else rec[name])
        cols.pop("vector")
        arrays = [pa.array(cols[n], type=self._schema.field(n).type) for n in self._schema.names if n != "vector"]
        flat = np.ascontiguousarray(np.stack([c.vector for c in chunks]).astype(np.float32)).ravel()
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), self.dim))
        return pa.Table.from_arrays(arrays, schema=self._schema)

    # ------------------------------------------------------------------ writes
    def replace_sources(self, sources: list[str], chunks: list[Chunk]) -> None:
        """One commit: upsert `chunks` by id and delete every other row of `sources`."""
        if not sources:
            return
        stray = {c.source for c in chunks} - set(sources)
        if stray:
            raise ValueError(f"chunks of sources not being replaced: {sorted(stray)[:3]}")
        tbl = self._fresh() or self._table(create=True)
        if not chunks:
            tbl.delete(in_list("source", sources))
            return
        data = self._arrow(chunks)
        (
            tbl.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(in_list("source", sources))
            .execute(data)
        )

    def delete_sources(self, sources: list[str]) -> int:
        tbl = self._fresh()
        if tbl is None or not sources:
            return 0
        where = in_list("source", sources)
        before = tbl.count_rows(where)
        if before:
            tbl.delete(where)
        return before

    def optimize(self) -> None:
        """Create missing indexes (FTS, scalar, IVF above `ann_min_rows`) and fold new rows into them."""
        tbl = self._fresh()
        if tbl is None or tbl.count_rows() == 0:
            return
        existing = {ix.name: ix for ix in tbl.list_indices()}
        columns = {tuple(ix.columns) for ix in existing.values()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ("search_text",) not in columns:
                tbl.create_fts_index("search_text", language="English", stem=True, remove_stop_words=True)
            for col, kind in _SCALAR_INDEXES:
                if (col,) not in columns:
                    tbl.create_scalar_index(col, index_type=kind)
            if ("vector",) not in columns and tbl.count_rows() >= max(self.ann_min_rows, 256):
                # IVF_FLAT: exact distances inside probed partitions, builds in seconds (HNSW took minutes on 2 cores).
                tbl.create_index(metric="cosine", index_type="IVF_FLAT", vector_column_name="vector")
            tbl.optimize()

    # ------------------------------------------------------------------ read views
    def read_view(self) -> View:
        """A view pinned to the latest version (a new one whenever anyone has committed since the last search)."""
        if self._closed:
            raise TailorError(f"{self.path}: store is closed")
        head = self._fresh()
        version = 0 if head is None else int(head.version)
        key = self._version_key(version) if head is not None else None
        build = False
        with self._view_lock:
            view = self._view
            if view is None or view.key != key:
                view = View(self, self._pin(version) if head is not None else None, version, key)
                self._view = view
            self._searches += 1
            if self.memory == "auto" and self._searches > 1 and view.wants_memory and not view.building:
                view.building = build = True
        if self.memory == "eager" and view.wants_memory:
            view.ensure_memory()
        elif build:
            threading.Thread(target=view.ensure_memory, name="llmtailor-dense-memory", daemon=True).start()
        return view

    def _version_key(self, version: int) -> tuple:
        """Identity of a committed version: its number and its manifest file. A table dropped and rebuilt by
        another process (`ingest --rebuild`) restarts its numbering, so the number alone could name an older
        table's version and a cached view of deleted data would be served. Lance names manifests
        `_versions/{2^64 - 1 - v:020}.manifest` (v2 paths) or `_versions/{v}.manifest` (v1)."""
        versions = self.path / f"{self.collection}.lance" / "_versions"
        for name in (f"{(1 << 64) - 1 - version:020d}.manifest", f"{version}.manifest"):
            try:
                st = (versions / name).stat()
            except OSError:
                continue
            return (version, st.st_ino, st.st_mtime_ns, st.st_size)
        return (version,)

    def _pin(self, version: int):
        tbl = self._db.open_table(self.collection)
        tbl.checkout(version)
        return tbl

    def warm(self) -> bool:
        """Build the in-memory dense index for the latest version now; False when this store does not use one."""
        view = self.read_view()
        return view.ensure_memory() is not None

    # ------------------------------------------------------------------ reads
    def source_states(self) -> dict[str, SourceState]:
        tbl = self._fresh()
        if tbl is None:
            return {}
        cols = ["source", "source_hash", "file_hash", "mtime", "size"]
        data = tbl.search().select(cols).limit(None).to_arrow().to_pydict() if tbl.count_rows() else {}
        states: dict[str, SourceState] = {}
        for i in range(len(data.get("source", []))):
            src = data["source"][i]
            st = states.get(src)
            if st is None:
                states[src] = SourceState(
                    src, {data["source_hash"][i]}, data["file_hash"][i], data["mtime"][i], data["size"][i], 1
                )
            else:
                st.source_hashes.add(data["source_hash"][i])
                st.chunks += 1
        return states

    def _take(self, where: str | None, columns: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        tbl = self._fresh()
        if tbl is None:
            return []
        q = tbl.search().select(columns)
        if where:
            q = q.where(where)
        return q.limit(limit).to_arrow().to_pylist()

    def vectors_for_text(self, text_hashes: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        uniq = sorted(set(text_hashes))
        for i in range(0, len(uniq), 1000):
            for row in self._take(in_list("text_hash", uniq[i : i + 1000]), ["text_hash", "vector"]):
                out[row["text_hash"]] = np.asarray(row["vector"], dtype=np.float32)
        return out

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        uniq = sorted(set(ids))
        for i in range(0, len(uniq), 1000):
            for row in self._take(in_list("id", uniq[i : i + 1000]), ["id", "vector"]):
                out[row["id"]] = np.asarray(row["vector"], dtype=np.float32)
        return out

    def fetch(self, flt: Filter | None = None, limit: int | None = None) -> list[Chunk]:
        return [Chunk.from_row(r) for r in self._take(to_sql(flt), list(CHUNK_FIELDS), limit)]

    def count(self, flt: Filter | None = None) -> int:
        tbl = self._fresh()
        if tbl is None:
            return 0
        return int(tbl.count_rows(to_sql(flt))) if flt is not None else int(tbl.count_rows())

    def search_dense(self, vector: np.ndarray, k: int, flt: Filter | None) -> list[Hit]:
        if k <= 0:
            return []
        view = self.read_view()
        ranked = view.dense(vector, k, flt)
        chunks = view.chunks(ranked, flt)
        hits = []
        for r in ranked:
            c = chunks.get(r.id)
            if c is not None:
                hits.append(Hit(c, score=r.score, dense=r.score, rank_dense=len(hits) + 1))
        return hits

    def search_sparse(self, text: str, k: int, flt: Filter | None) -> list[Hit]:
        if k <= 0 or not text.strip():
            return []
        view = self.read_view()
        ranked = view.sparse(text, k, flt)
        chunks = view.chunks(ranked, flt)
        hits = []
        for r in ranked:
            c = chunks.get(r.id)
            if c is not None:
                hits.append(Hit(c, score=r.score, sparse=r.score, rank_sparse=len(hits) + 1))
        return hits

    def close(self) -> None:
        self._closed = True
        with self._view_lock:
            self._view = None
        self._tbl = None
