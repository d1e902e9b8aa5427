"""LanceDB backend: the embedded default, files in the index folder, no server.

Writes are single Lance commits (`merge_insert` that also deletes a source's stale rows), so a killed
ingest leaves each source either fully old or fully new. BM25 (Lance full-text search) queries get the
filter as a SQL prefilter, so top-k is taken among allowed chunks only.

Reads always see the latest commit, including one made by another process: every search first asks Lance for
the latest version (about 0.1 ms) and then runs entirely on a `_View`, a table handle pinned to that version,
so the dense ranking, the BM25 ranking and the rows read back all come from one consistent version.

Dense search below `ann_min_rows` chunks is exact. A view can hold an in-memory copy of its version
(`_DenseMemory`): vectors and access-control columns in numpy, where the filter becomes a boolean mask applied
before top-k, and the result columns (text, metadata) in Arrow, so the top-k rows are not read from Lance either.
About dim x 4 bytes per chunk for the vectors plus the text: ~280 MB per 100k Cranfield-sized chunks at 384 dims,
twice that for a moment while a new version's copy is built. The copy belongs to one version and dies with it:
a commit by anyone makes the next search open a new view, so a stale copy is never searched. Building it reads
the whole table (about 2 s per 100k chunks on 2 busy cores), so a process that searches once (`tailor rag
query`) never builds it and uses Lance's exact flat scan with the SQL prefilter; a long-lived one (a server, an
evaluation) builds it in the background from its second search on and uses Lance until it is ready
(`memory="auto"`). At or above `ann_min_rows` an IVF index is built and Lance answers with the SQL prefilter.

Searches rank by id only (`_View.dense` / `_View.sparse`) and read text and metadata for the winners
(`_View.chunks`), which also re-checks each row against the filter.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.errors import TailorError
from llmtailor.rag.filters import INT_COLUMNS, And, Cmp, Columns, Filter, matches, to_mask, to_sql
from llmtailor.rag.store import CHUNK_FIELDS, Chunk, Hit, Ranked, SourceState

log = logging.getLogger(__name__)

_SCALAR_INDEXES = (
    ("tenant", "BITMAP"),
    ("access_level", "BTREE"),
    ("groups", "LABEL_LIST"),
    ("groups_empty", "BITMAP"),
    ("source", "BTREE"),
    ("text_hash", "BTREE"),
    ("id", "BTREE"),
)
# Search results leave out `search_text` (title + headings + text, only needed to embed and index): reading it
# for every candidate doubled the cost of a BM25 query at 100k chunks.
_RESULT_COLUMNS = [f for f in CHUNK_FIELDS if f != "search_text"]
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


def _in_list(column: str, values: list[str]) -> str | None:
    return to_sql(Cmp(column, "in", tuple(values)))


class LanceDBStore:
    """Chunks in one Lance table under `path` (usually `<index>/lancedb`).

    `memory`: "auto" (build the in-memory exact dense index in the background from a handle's second search
    on), "eager" (build it, synchronously, on the first search of every version) or "off" (always Lance).
    `memory_rows`: the in-memory copy also holds text and metadata (the rows of a search's results are then read
    from memory: about 6 ms of CPU less per search at 100k chunks, about 130 MB more per 100k chunks).
    `nprobes`: IVF partitions probed per query once an IVF index exists (None = Lance's default, 20). 60 is the
    default: with the access filter as prefilter at 100k chunks, dense recall@5 against exact search was 0.907 with
    20 and 1.0 with 60, at the same latency (bench/results/retrieval_latency.md).
    """

    def __init__(self, path: str | Path, dim: int, collection: str = "llmtailor", ann_min_rows: int = 250_000,
                 memory: str = "auto", nprobes: int | None = 60, memory_rows: bool = True):
        import lancedb

        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        self.path = Path(path)
        self.dim = dim
        self.collection = collection
        self.ann_min_rows = ann_min_rows
        self.memory = memory
        self.memory_rows = memory_rows
        self.nprobes = nprobes
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(str(self.path))
        self._schema = _schema(dim)
        self._head_lock = threading.Lock()
        self._view_lock = threading.Lock()
        self._tbl = self._open()
        self._view: _View | None = None
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
            tbl.delete(_in_list("source", sources))
            return
        data = self._arrow(chunks)
        (
            tbl.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(_in_list("source", sources))
            .execute(data)
        )

    def delete_sources(self, sources: list[str]) -> int:
        tbl = self._fresh()
        if tbl is None or not sources:
            return 0
        where = _in_list("source", sources)
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
    def read_view(self) -> _View:
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
                view = _View(self, self._pin(version) if head is not None else None, version, key)
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
            for row in self._take(_in_list("text_hash", uniq[i : i + 1000]), ["text_hash", "vector"]):
                out[row["text_hash"]] = np.asarray(row["vector"], dtype=np.float32)
        return out

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        uniq = sorted(set(ids))
        for i in range(0, len(uniq), 1000):
            for row in self._take(_in_list("id", uniq[i : i + 1000]), ["id", "vector"]):
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


class _View:
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
        self.memory: _DenseMemory | None = None
        self.building = False
        self._build_lock = threading.Lock()

    def ensure_memory(self) -> _DenseMemory | None:
        """Build this version's in-memory dense index (once; concurrent callers wait for the one build)."""
        if not self.wants_memory:
            return None
        with self._build_lock:
            if self.memory is None and not self.store._closed:
                try:
                    self.memory = _DenseMemory(self.tbl, self.store.dim, self.store.memory_rows)
                except Exception as e:  # searches keep using Lance; a broken build must not break them
                    log.warning("in-memory dense index for %s v%d not built: %s", self.store.path, self.version, e)
            return self.memory

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
        q = self.tbl.search(text, query_type="fts", fts_columns="search_text")
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
            data += self.tbl.take_row_ids(rows).select(_RESULT_COLUMNS).to_arrow().to_pylist()
        loose = sorted({r.id for r in ranked if r.row is None})
        if loose:
            where = _in_list("id", loose)
            if flt is not None:
                where = f"({where}) AND ({to_sql(flt)})"
            data += self.tbl.search().select(_RESULT_COLUMNS).where(where).limit(None).to_arrow().to_pylist()
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


def _text_array(values: Any) -> np.ndarray:
    """Strings as a variable-width numpy array. Not `dtype=str`: `to_mask` converts IN-lists to the column's
    dtype, and a fixed width (<U4 for 'acme') would cut 'acme-x' to 'acme' and match it."""
    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
    return np.asarray(values, dtype=string_dtype() if string_dtype is not None else object)


class _MemoryColumns(Columns):
    """`filters.Columns` for `to_mask`, filled from Arrow without Python objects; other columns load on demand."""

    def __init__(self, n: int, values: dict[str, Any], members: dict[str, Any], empty: dict[str, Any], load):
        self.n = n
        self.values = _LazyValues(values, load)
        self.members = members
        self.empty = empty

    def block(self, lo: int, hi: int) -> Columns:
        """Rows lo..hi only (numpy views, no copies), so a filter is evaluated on one tenant's rows."""
        cols = Columns.__new__(Columns)
        cols.n = hi - lo
        cols.values = _Slice(self.values, lo, hi)
        cols.members = {name: {v: m[lo:hi] for v, m in masks.items()} for name, masks in self.members.items()}
        cols.empty = {name: m[lo:hi] for name, m in self.empty.items()}
        return cols


class _Slice:
    """Read-only `values` mapping of a row block."""

    def __init__(self, values: Any, lo: int, hi: int):
        self._values, self._lo, self._hi = values, lo, hi

    def __getitem__(self, column: str) -> np.ndarray:
        return self._values[column][self._lo : self._hi]


class _LazyValues(dict):
    """Filter columns beyond the access-control ones (for `--where`) are read from the pinned version when a
    filter first names them."""

    def __init__(self, values: dict[str, Any], load):
        super().__init__(values)
        self._load = load
        self._lock = threading.Lock()

    def __missing__(self, column: str) -> Any:
        with self._lock:
            if column not in self:
                dict.__setitem__(self, column, self._load(column))
            return dict.__getitem__(self, column)


class _DenseMemory:
    """One table version in memory: vectors and access-control columns in numpy for exact, filtered-before-top-k
    dense search, and (with `keep_rows`) the result columns in Arrow, so the rows of the top-k are read in
    microseconds instead of a Lance take (6 ms of CPU for 5 rows x 22 columns at 100k chunks, the largest part
    of a warm hybrid search). Cost: the vectors (dim x 4 bytes per chunk) plus the text and metadata (about
    130 MB per 100k Cranfield-sized chunks).

    Rows are sorted by (tenant, access_level) and every access filter pins one tenant and a maximum level, so a
    query only scores the contiguous block of rows of its tenant at or below its level; the rest of the filter
    (groups, --where) is a boolean mask on that block, applied before top-k.
    """

    def __init__(self, tbl: Any, dim: int, keep_rows: bool = True):
        import pyarrow as pa
        import pyarrow.compute as pc

        self.tbl = tbl
        base = ["id", "vector", "tenant", "access_level", "groups"]
        extra = [c for c in _RESULT_COLUMNS if c not in base] if keep_rows else []
        data = tbl.search().select(base + extra).with_row_id(True).limit(None).to_arrow()
        n = self.n = data.num_rows
        tenant = pc.dictionary_encode(data["tenant"]).combine_chunks()
        tcodes = tenant.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        tnames = tenant.dictionary.to_pylist()
        level = data["access_level"].to_numpy().astype(np.int64)
        order = np.lexsort((level, tcodes))  # by tenant, then level
        self.order = order  # sorted position -> scan position (the payload table stays in scan order)
        # One chunk per column: `take` on a many-chunk table cost 15 ms for 5 rows, on one chunk 0.2 ms.
        self.payload = data.select(_RESULT_COLUMNS).combine_chunks() if keep_rows else None
        self.row_ids = data["_rowid"].to_numpy()[order]
        self.ids = np.asarray(data["id"].to_pylist(), dtype=object)[order]
        flat = data["vector"].combine_chunks().flatten().to_numpy()
        self.vectors_ = np.ascontiguousarray(flat.reshape(n, dim)[order], dtype=np.float32)
        self.levels = level[order]
        tsorted = tcodes[order]
        self.tenant_rows: dict[str, tuple[int, int]] = {}
        for code, name in enumerate(tnames):
            lo, hi = np.searchsorted(tsorted, [code, code + 1])
            if hi > lo:
                self.tenant_rows[str(name)] = (int(lo), int(hi))
        position = np.empty(n, dtype=np.int64)  # original scan position -> sorted position
        position[order] = np.arange(n)
        groups = data["groups"].combine_chunks()
        lengths = pc.list_value_length(groups).fill_null(0).to_numpy(zero_copy_only=False)
        members: dict[str, np.ndarray] = {}
        flat_groups = pc.list_flatten(groups)
        if len(flat_groups):
            parents = position[pc.list_parent_indices(groups).to_numpy(zero_copy_only=False)]
            enc = pc.dictionary_encode(flat_groups)
            gcodes = enc.indices.to_numpy(zero_copy_only=False)
            for code, name in enumerate(enc.dictionary.to_pylist()):
                m = np.zeros(n, dtype=bool)
                m[parents[gcodes == code]] = True
                members[name] = m
        values = {"tenant": _text_array(tnames)[tsorted], "access_level": self.levels}
        self.columns = _MemoryColumns(n, values, {"groups": members}, {"groups": (lengths == 0)[order]},
                                      self._load_column)
        self._pa = pa
        self._by_row: np.ndarray | None = None

    def _positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Sorted positions of these row ids (-1 where absent)."""
        if self._by_row is None:
            self._by_row = np.argsort(self.row_ids, kind="stable")
        keys = self.row_ids[self._by_row]
        at = np.searchsorted(keys, row_ids)
        at = np.minimum(at, max(len(keys) - 1, 0))
        found = keys[at] == row_ids if len(keys) else np.zeros(len(row_ids), dtype=bool)
        return np.where(found, self._by_row[at], -1)

    def _load_column(self, column: str) -> np.ndarray:
        data = self.tbl.search().select([column]).with_row_id(True).limit(None).to_arrow()
        pos = self._positions(data["_rowid"].to_numpy())
        if (pos < 0).any() or len(pos) != self.n:
            raise RuntimeError(f"column {column} does not line up with the in-memory index")
        values = data[column].to_pylist()
        arr = np.asarray(values, dtype=np.int64) if column in INT_COLUMNS else _text_array(values)
        out = np.empty_like(arr)
        out[pos] = arr
        return out

    @staticmethod
    def _block_bounds(flt: Filter | None) -> tuple[str | None, int | None]:
        """The tenant (`tenant = T`) and maximum level (`access_level <= L` / `< L`) a filter requires at top level."""
        tenant = level = None
        parts = flt.parts if isinstance(flt, And) else (flt,)
        for part in parts:
            if not isinstance(part, Cmp):
                continue
            if part.column == "tenant" and part.op == "=" and isinstance(part.value, str) and tenant is None:
                tenant = part.value
            elif part.column == "access_level" and isinstance(part.value, int) and not isinstance(part.value, bool):
                bound = part.value if part.op == "<=" else part.value - 1 if part.op == "<" else None
                if bound is not None:
                    level = bound if level is None else min(level, bound)
        return tenant, level

    def search(self, query: np.ndarray, k: int, flt: Filter | None) -> list[Ranked]:
        from llmtailor.rag.blas import single_thread

        lo, hi = 0, self.n
        tenant, level = self._block_bounds(flt)
        if tenant is not None:
            lo, hi = self.tenant_rows.get(tenant, (0, 0))
        if level is not None and hi > lo:
            hi = lo + int(np.searchsorted(self.levels[lo:hi], level, side="right"))
        if hi <= lo:
            return []
        with single_thread():
            if flt is None:
                candidates = None
                sims = self.vectors_[lo:hi] @ query
            else:
                allowed = to_mask(flt, self.columns.block(lo, hi))
                idx = np.flatnonzero(allowed)
                if idx.size == 0:
                    return []
                if idx.size * 2 > hi - lo:  # mostly allowed: score the contiguous block, drop the rest
                    sims = (self.vectors_[lo:hi] @ query)[idx]
                else:
                    sims = self.vectors_[lo + idx] @ query
                candidates = lo + idx
        k = min(k, sims.shape[0])
        top = np.argpartition(-sims, k - 1)[:k] if k < sims.shape[0] else np.arange(sims.shape[0])
        top = top[np.lexsort((top, -sims[top]))]  # best first; ties in row order
        rows = (lo + top) if candidates is None else candidates[top]
        return [Ranked(str(self.ids[i]), float(s), int(self.row_ids[i])) for i, s in zip(rows, sims[top], strict=True)]

    def vectors(self, ranked: list[Ranked]) -> dict[str, np.ndarray]:
        with_rows = [r for r in ranked if r.row is not None]
        if not with_rows:
            return {}
        pos = self._positions(np.asarray([r.row for r in with_rows], dtype=self.row_ids.dtype))
        return {r.id: self.vectors_[p].copy() for r, p in zip(with_rows, pos, strict=True) if p >= 0}

    def rows(self, ranked: list[Ranked]) -> tuple[list[dict[str, Any]], list[Ranked]]:
        """Result rows of these candidates from memory, and the candidates it does not hold (read them from Lance)."""
        if self.payload is None:
            return [], list(ranked)
        with_rows = [r for r in ranked if r.row is not None]
        pos = self._positions(np.asarray([r.row for r in with_rows], dtype=self.row_ids.dtype)) if with_rows \
            else np.zeros(0, dtype=np.int64)
        found = [int(p) for p in pos if p >= 0]
        missing = [r for r, p in zip(with_rows, pos, strict=True) if p < 0] + [r for r in ranked if r.row is None]
        if not found:
            return [], missing
        import pyarrow as pa

        return self.payload.take(pa.array(self.order[found])).to_pylist(), missing
