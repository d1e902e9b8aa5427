"""An index folder: the store, the embedder it was built with, and `index.json` recording its version.

`index.json` is written atomically after the store commits, and it is never the source of truth
for what is indexed (the store is): a killed ingest leaves a stale `index.json` at worst, and the
next ingest reconciles from the store. Queries read the embedding model and backend from it, so
an index is always searched with the model that built it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.io import stable_hash, write_json
from llmtailor.rag.config import RagConfig, StoreConfig
from llmtailor.rag.embed import Embedder, load_embedder
from llmtailor.rag.store import ChunkStore, SourceState

INFO_FILE = "index.json"
FORMAT = 2  # 2: LanceDB rows carry the indexed groups_empty flag
HISTORY_KEEP = 50


def open_store(store_cfg: StoreConfig, index_dir: Path, dim: int) -> ChunkStore:
    """The configured backend, rooted in the index folder (Qdrant local mode) or at its server URL."""
    if store_cfg.backend == "lancedb":
        from llmtailor.rag.lancedb_store import LanceDBStore

        return LanceDBStore(index_dir / "lancedb", dim, store_cfg.collection, store_cfg.ann_min_rows)
    from llmtailor.rag.qdrant_store import QdrantStore

    api_key = os.environ.get(store_cfg.api_key_env) if store_cfg.api_key_env else None
    if store_cfg.api_key_env and not api_key:
        raise TailorError(f"store.api_key_env names ${store_cfg.api_key_env}, which is not set")
    return QdrantStore(
        dim, store_cfg.collection, url=store_cfg.url, path=None if store_cfg.url else index_dir / "qdrant",
        api_key=api_key,
    )


def content_hash(states: dict[str, SourceState]) -> str:
    """Hash of what is indexed: every source with the hash of its bytes + metadata + chunking."""
    return stable_hash(sorted((s, sorted(st.source_hashes)) for s, st in states.items()))


@contextlib.contextmanager
def write_lock(index_dir: Path) -> Iterator[None]:
    """One writer per index folder (a second ingest fails fast instead of interleaving commits)."""
    import fcntl

    index_dir.mkdir(parents=True, exist_ok=True)
    with (index_dir / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TailorError(f"{index_dir}: another ingest is writing this index; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Index:
    """An opened index folder: `store`, `embedder`, and its recorded `info`."""

    def __init__(self, index_dir: Path, cfg: RagConfig, embedder: Embedder, store: ChunkStore, info: dict[str, Any]):
        self.dir = index_dir
        self.cfg = cfg
        self.embedder = embedder
        self.store = store
        self.info = info

    @staticmethod
    def read_info(index_dir: Path) -> dict[str, Any] | None:
        path = Path(index_dir) / INFO_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise TailorError(f"{path}: unreadable index description ({e}); rebuild with --rebuild") from None

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        cfg: RagConfig | None = None,
        *,
        create: bool = False,
        rebuild: bool = False,
        embedder: Embedder | None = None,
        base_dir: Path | None = None,
    ) -> Index:
        """Open (or with `create`, start) an index; queries use the model and backend recorded in it."""
        cfg = cfg or RagConfig()
        index_dir = Path(index_dir)
        if rebuild and index_dir.exists():
            _wipe(index_dir)
        info = cls.read_info(index_dir)
        if info is None:
            if not create:
                if not index_dir.exists():
                    raise TailorError(
                        f"{index_dir}: index not found; build it with `tailor rag ingest PATH --index {index_dir}`"
                    )
                raise TailorError(
                    f"{index_dir}: not an llmtailor index (no {INFO_FILE}); build one with "
                    f"`tailor rag ingest PATH --index {index_dir}`"
                )
            embedder = embedder or load_embedder(cfg.embedding, base_dir)
            info = {
                "format": FORMAT,
                "embedding": {"model": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim},
                "store": cfg.store.model_dump(mode="json"),
                "chunking": cfg.chunking.model_dump(mode="json"),
                "content_hash": None,
                "chunks": 0,
                "sources": 0,
                "history": [],
            }
        else:
            if info.get("format") != FORMAT:
                raise TailorError(f"{index_dir}: index format {info.get('format')} is not {FORMAT}; rebuild it")
            recorded = info["embedding"]
            if embedder is None:
                # Updating an index keeps the model it was built with unless one is named explicitly
                # (config key or --embedding); a different explicit model fails below instead of mixing vectors.
                explicit = create and "model" in cfg.embedding.model_fields_set
                model = cfg.embedding.model if explicit else recorded["model"]
                embedder = load_embedder(cfg.embedding.model_copy(update={"model": model}), base_dir)
            if embedder.fingerprint != recorded["fingerprint"]:
                raise TailorError(
                    f"{index_dir}: built with embedding model {recorded['model']!r} ({recorded['fingerprint']}), "
                    f"but {embedder.name!r} ({embedder.fingerprint}) was given; vectors would not be comparable. "
                    "Use the same model, or re-ingest with --rebuild."
                )
            if create and info.get("store", {}).get("backend") != cfg.store.backend:
                raise TailorError(
                    f"{index_dir}: built on backend {info['store']['backend']!r}, config says {cfg.store.backend!r}; "
                    "use --rebuild to rebuild it"
                )
        store_cfg = StoreConfig.model_validate(info["store"]) if not create else cfg.store
        store = open_store(store_cfg, index_dir, embedder.dim)
        return cls(index_dir, cfg, embedder, store, info)

    def record_build(self, states: dict[str, SourceState], summary: dict[str, Any]) -> dict[str, Any]:
        """Write index.json for the state the store is in now (atomic rename)."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        info = dict(self.info)
        info["embedding"] = {
            "model": self.embedder.name, "fingerprint": self.embedder.fingerprint, "dim": self.embedder.dim,
        }
        info["store"] = self.cfg.store.model_dump(mode="json")
        info["chunking"] = self.cfg.chunking.model_dump(mode="json")
        info["content_hash"] = content_hash(states)
        info["chunks"] = sum(st.chunks for st in states.values())
        info["sources"] = len(states)
        info["built_at"] = now
        info["store_version"] = getattr(self.store, "version", None)
        version = stable_hash({"content": info["content_hash"], "embedding": info["embedding"]["fingerprint"],
                               "chunking": info["chunking"]})
        info["version"] = version
        history = list(info.get("history", []))
        history.append({"at": now, "version": version, "content_hash": info["content_hash"], **summary})
        info["history"] = history[-HISTORY_KEEP:]
        write_json(self.dir / INFO_FILE, info)
        self.info = info
        return info

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class _RecordedEmbedder:
    """An index's embedding model as index.json records it (name, fingerprint, size), for work that embeds nothing."""

    name: str
    fingerprint: str
    dim: int


def delete_sources(index_dir: str | Path, targets: list[str], cfg: RagConfig | None = None, *,
                   base_dir: Path | None = None) -> dict[str, Any]:
    """Remove documents from an index without re-reading any file: `targets` are files or folders (every source
    under them) as ingested, or sources exactly as stored (`record:<id>`). One commit; a running server searches
    the new version on its next query. Nothing matching is an error, so a typo never passes as a deletion."""
    index_dir = Path(index_dir)
    with write_lock(index_dir):
        info = Index.read_info(index_dir)
        # Deleting embeds nothing: the recorded model's identity opens the index without loading the model.
        recorded = _RecordedEmbedder(info["embedding"]["model"], info["embedding"]["fingerprint"],
                                     info["embedding"]["dim"]) if info and "embedding" in info else None
        index = Index.open(index_dir, cfg, base_dir=base_dir, embedder=recorded)  # type: ignore[arg-type]
        try:
            states = index.store.source_states()
            wanted: list[str] = []
            for raw in targets:
                full = os.path.abspath(Path(raw).expanduser())
                hits = [s for s in states if s in (raw, full) or s.startswith(full.rstrip(os.sep) + os.sep)]
                if not hits:
                    raise TailorError(f"{raw}: no indexed document is this file, lies under this folder or has this "
                                      f"source; `tailor rag status --index {index_dir}` shows the index")
                wanted.extend(h for h in hits if h not in wanted)
            chunks = index.store.delete_sources(wanted)
            after = index.store.source_states()
            info = index.record_build(after, {"deleted": len(wanted), "chunks_deleted": chunks})
            return {"index_dir": str(index_dir), "deleted": wanted, "chunks_deleted": chunks,
                    "version": info["version"], "chunks_total": info["chunks"]}
        finally:
            index.close()


def _wipe(index_dir: Path) -> None:
    """Remove an index folder's contents, refusing folders that do not look like an index."""
    known = {INFO_FILE, "lancedb", "qdrant", ".lock"}
    present = {p.name for p in index_dir.iterdir()}
    if present - known and INFO_FILE not in present:
        raise TailorError(f"{index_dir}: --rebuild refused: the folder has files that are not an llmtailor index")
    for name in present & known:
        p = index_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif name != ".lock":
            p.unlink()
