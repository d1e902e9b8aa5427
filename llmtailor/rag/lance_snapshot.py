"""One LanceDB table version in memory, for a long-lived process: exact dense search and BM25 with the access filter
as a boolean mask applied before top-k, and the result rows, so a warm search does not touch Lance at all.

Vectors and access-control columns live in numpy, BM25 postings (`sparse.MemoryBM25`, tokenised as the FTS index
tokenises) in numpy, the result columns (text, metadata) in Arrow. Cost per 100k Cranfield-sized chunks at 384
dims: ~150 MB vectors, ~130 MB rows, ~60 MB postings. The snapshot belongs to one version (`lance_view.View`) and
dies with it: a commit by anyone, this process or another, makes the next search open a new view, so a stale
snapshot is never searched (the invalidation that issue 12's "access changes reach a running server within one
second" relies on).

Rows are sorted by (tenant, access_level) and every access filter pins one tenant and a maximum level, so a query
only scores the contiguous block of rows of its tenant at or below its level; the rest of the filter (groups,
--where) is a boolean mask on that block, applied before top-k.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from llmtailor.rag.filters import INT_COLUMNS, And, Cmp, Columns, Filter, to_mask
from llmtailor.rag.store import CHUNK_FIELDS, Ranked

# Search results leave out `search_text` (title + headings + text, only needed to embed and index): reading it
# for every candidate doubled the cost of a BM25 query at 100k chunks.
RESULT_COLUMNS = [f for f in CHUNK_FIELDS if f != "search_text"]
# The column the FTS index (and so the in-memory BM25) covers.
FTS_COLUMN = "search_text"


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


class Snapshot:
    """One table version in memory (see the module docstring). `keep_rows`: hold the result columns too (the rows
    of the top-k are then read in microseconds instead of a Lance take: 6 ms of CPU for 5 rows x 22 columns at 100k
    chunks). `bm25`: hold the BM25 postings of `search_text` too (the BM25 leg then runs here, not in Lance)."""

    def __init__(self, tbl: Any, dim: int, keep_rows: bool = True, bm25: bool = True):
        import pyarrow.compute as pc

        self.tbl = tbl
        base = ["id", "vector", "tenant", "access_level", "groups"]
        extra = [c for c in RESULT_COLUMNS if c not in base] if keep_rows else []
        if bm25:
            extra.append(FTS_COLUMN)
        data = tbl.search().select(base + extra).with_row_id(True).limit(None).to_arrow()
        n = self.n = data.num_rows
        tenant = pc.dictionary_encode(data["tenant"]).combine_chunks()
        tcodes = tenant.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        tnames = tenant.dictionary.to_pylist()
        level = data["access_level"].to_numpy().astype(np.int64)
        order = np.lexsort((level, tcodes))  # by tenant, then level
        self.order = order  # sorted position -> scan position (the payload table stays in scan order)
        # One chunk per column: `take` on a many-chunk table cost 15 ms for 5 rows, on one chunk 0.2 ms.
        self.payload = data.select(RESULT_COLUMNS).combine_chunks() if keep_rows else None
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
        self._by_row: np.ndarray | None = None
        self.bm25 = None
        if bm25:
            from llmtailor.rag.sparse import MemoryBM25

            texts = data[FTS_COLUMN].take(order).to_pylist()  # in sorted order: postings by row position
            del data
            self.bm25 = MemoryBM25([t or "" for t in texts])

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

    def _block(self, flt: Filter | None) -> tuple[int, int, np.ndarray | None]:
        """The rows a filter can admit: (lo, hi) of the caller's tenant and level block, and the filter as a mask
        over that block (None: no filter). An empty block gives hi <= lo."""
        lo, hi = 0, self.n
        tenant, level = self._block_bounds(flt)
        if tenant is not None:
            lo, hi = self.tenant_rows.get(tenant, (0, 0))
        if level is not None and hi > lo:
            hi = lo + int(np.searchsorted(self.levels[lo:hi], level, side="right"))
        if hi <= lo or flt is None:
            return lo, hi, None
        return lo, hi, to_mask(flt, self.columns.block(lo, hi))

    def _ranked(self, rows: np.ndarray, scores: np.ndarray) -> list[Ranked]:
        return [Ranked(str(self.ids[i]), float(s), int(self.row_ids[i])) for i, s in zip(rows, scores, strict=True)]

    def search(self, query: np.ndarray, k: int, flt: Filter | None) -> list[Ranked]:
        """Exact dense top-k (cosine on unit vectors) among the rows `flt` admits."""
        from llmtailor.rag.blas import single_thread

        lo, hi, allowed = self._block(flt)
        if hi <= lo:
            return []
        with single_thread():
            if allowed is None:
                candidates = None
                sims = self.vectors_[lo:hi] @ query
            else:
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
        return self._ranked(rows, sims[top])

    def search_sparse(self, text: str, k: int, flt: Filter | None) -> list[Ranked]:
        """BM25 top-k among the rows `flt` admits (the mask goes in before top-k: k allowed rows whenever k
        allowed rows match). Only valid when built with `bm25`."""
        if self.bm25 is None:
            raise RuntimeError("this snapshot holds no BM25 postings")
        lo, hi, allowed = self._block(flt)
        if hi <= lo or k <= 0:
            return []
        rows, scores = self.bm25.top(text, k, lo, hi, allowed)
        return self._ranked(rows, scores)

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
