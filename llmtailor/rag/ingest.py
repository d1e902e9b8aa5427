"""Ingest: files (or records) -> chunks -> vectors -> store, incrementally and crash-safely.

What is indexed is read back from the store (per-source hashes), so re-running on an unchanged corpus
only stats the files. A changed file is re-chunked, but passages whose text is unchanged reuse their
stored vectors. Each batch of files is one atomic store commit that also removes the files' stale
chunks; a killed run therefore leaves every file either fully old or fully new, and the next run
finishes the job. Bad files are reported with the reason and never stop the batch.

Security: a symbolic link that resolves outside the folder being ingested (file, folder or sidecar) is reported
and never followed or read. Identical files are indexed once only within one access scope (tenant, level,
groups): the same bytes under two tenants or two audiences are two documents, and a duplicate is only ever
reported against a file of the same scope, so no message names another tenant's file.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.io import stable_hash
from llmtailor.rag.acl import DEFAULT_LEVEL
from llmtailor.rag.chunk import HEADING_SEP, Chunker
from llmtailor.rag.config import RagConfig
from llmtailor.rag.embed import Embedder
from llmtailor.rag.index import Index, write_lock
from llmtailor.rag.loaders import META_TYPES, ParsedDoc, Refused, SkipFile, file_type, parse_bytes
from llmtailor.rag.meta import DocMeta, inside, is_sidecar, merge, meta_from_mapping, read_sidecar
from llmtailor.rag.store import Chunk, SourceState

Progress = Callable[[str, int, int], None]  # (stage, done, total)
# Version of the rules that decide a file's metadata and identity (part of every source hash). Raising it makes the
# next ingest re-check every file once (vectors are reused): 2 = file metadata may only narrow access, links out of
# the folder are refused, de-duplication is per access scope; what an older ingest let through is fixed or removed.
RULES = 2


@dataclass
class Skipped:
    """A file that was not ingested, and why."""

    file: str
    reason: str


@dataclass
class IngestReport:
    """What an ingest did; `skipped` non-empty means the CLI exits non-zero (unless --skip-errors)."""

    index_dir: str
    files_seen: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    chunks_total: int = 0
    embedded: int = 0
    reused_vectors: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    version: str | None = None
    content_hash: str | None = None
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_written / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks_per_second"] = round(self.chunks_per_second, 1)
        d["seconds"] = round(self.seconds, 3)
        d["embed_seconds"] = round(self.embed_seconds, 3)
        return d


@dataclass
class Record:
    """A document that is not a file (BEIR corpus rows, API input)."""

    id: str
    text: str
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Prepared:
    source: str
    source_hash: str
    file_hash: str
    mtime: float
    size: int
    doc: ParsedDoc
    meta: DocMeta
    display: str
    is_new: bool


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


LINK_OUT = "symbolic link pointing outside the ingested folder (not followed)"


def discover(
    paths: Iterable[str | Path], exclude: Path | None = None
) -> tuple[list[Path], list[Skipped], dict[Path, Path | None]]:
    """Files under the given paths (recursive, sorted, hidden files and sidecars left out), what was skipped, and
    each file's containing folder (resolved; None for a file named on the command line, which is taken as given).

    A linked folder is never walked (os.walk does not follow links); one pointing out of the folder is reported here.
    A linked file is checked in `_Ingestor.one_file`, just before it would be read.
    """
    files: list[tuple[Path, Path | None]] = []
    skipped: list[Skipped] = []
    excluded = exclude.resolve() if exclude is not None else None
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists() and not p.is_symlink():
            skipped.append(Skipped(str(raw), "not found"))
            continue
        if p.is_dir():
            root = p.resolve()
            for walked, dirs, names in os.walk(p):
                root_path = Path(walked)
                keep = []
                for d in sorted(dirs):
                    sub = root_path / d
                    if d.startswith(".") or sub.resolve() == excluded:
                        continue
                    if sub.is_symlink():
                        if not inside(sub, root):
                            skipped.append(Skipped(_display(sub), LINK_OUT))
                        continue  # a link inside the folder: its target is walked under its own name
                    keep.append(d)
                dirs[:] = keep
                for name in sorted(names):
                    if name.startswith(".") or is_sidecar(Path(name)):
                        continue
                    files.append((root_path / name, root))
        else:
            files.append((p, None))
    roots: dict[Path, Path | None] = {}
    unique = []
    for f, root in files:
        key = Path(os.path.abspath(f))
        if key not in roots:
            roots[key] = root
            unique.append(key)
    return unique, skipped, roots


def _scoped_hash(content_hash: str, meta: DocMeta) -> str:
    """The content hash within the document's access scope: identical bytes are one document only for one audience.

    Stored as the chunks' `file_hash`, so de-duplication against the index never matches another tenant's file (or
    the same tenant's file under other groups or another level), and a duplicate never names it.
    """
    scope = {
        "tenant": meta.tenant or "",
        "level": DEFAULT_LEVEL if meta.access_level is None else meta.access_level,
        "groups": sorted(meta.groups or ()),
    }
    return stable_hash({"content": content_hash, "scope": scope}, 16)


def _under(source: str, roots: list[Path]) -> bool:
    for root in roots:
        r = str(root)
        if source == r or source.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


class _Ingestor:
    """Holds one ingest's state: the opened index, the chunker, the batch, the report."""

    def __init__(self, index: Index, defaults: DocMeta, progress: Progress | None):
        self.index = index
        self.store = index.store
        self.embedder: Embedder = index.embedder
        cfg = index.cfg
        self.cfg = cfg
        self.chunker = Chunker(self.embedder, cfg.chunking.max_tokens, cfg.chunking.overlap_tokens)
        self.defaults = defaults
        self.progress = progress
        self.report = IngestReport(index_dir=str(index.dir))
        self.states: dict[str, SourceState] = self.store.source_states()
        self.store_had_rows = bool(self.states)
        self.batch: list[_Prepared] = []
        self.batch_chunks: list[Chunk] = []
        self.settings_key = stable_hash(
            {"defaults": defaults.fingerprint(), "chunking": cfg.chunking.model_dump(mode="json"), "rules": RULES}
        )

    # -------------------------------------------------------------- hashing
    def source_hash(self, file_hash: str, sidecar_raw: str) -> str:
        return stable_hash({"file": file_hash, "sidecar": sidecar_raw, "settings": self.settings_key})

    def unchanged(self, source: str, mtime: float, size: int, sidecar_raw: str) -> bool:
        st = self.states.get(source)
        if st is None or len(st.source_hashes) != 1 or st.mtime != mtime or st.size != size:
            return False
        return self.source_hash(st.file_hash, sidecar_raw) in st.source_hashes

    # -------------------------------------------------------------- chunks
    def to_chunks(self, p: _Prepared) -> list[Chunk]:
        spans = self.chunker.split(p.doc)
        meta = p.meta
        title = meta.title or p.doc.title
        out = []
        for i, sp in enumerate(spans):
            heads = list(sp.headings)
            if title and (not heads or heads[0] != title):
                heads = [title, *heads]
            header = HEADING_SEP.join(heads)
            search_text = f"{header}\n\n{sp.text}" if header else sp.text
            text_hash = stable_hash(search_text)
            out.append(
                Chunk(
                    id=stable_hash({"source": p.source, "start": sp.start, "text": text_hash}, 24),
                    source=p.source,
                    text=sp.text,
                    search_text=search_text,
                    text_hash=text_hash,
                    source_hash=p.source_hash,
                    file_hash=p.file_hash,
                    mtime=p.mtime,
                    size=p.size,
                    title=title,
                    heading_path=sp.heading_path,
                    page=sp.page,
                    page_end=sp.page_end,
                    char_start=sp.start,
                    char_end=sp.end,
                    chunk_index=i,
                    tenant=meta.tenant or "",
                    access_level=DEFAULT_LEVEL if meta.access_level is None else meta.access_level,
                    groups=list(meta.groups or ()),
                    category=meta.category or "",
                    date=meta.date or "",
                    file_type=p.doc.file_type,
                    meta=dict(meta.extra),
                )
            )
        return out

    def add(self, p: _Prepared) -> None:
        chunks = self.to_chunks(p)
        if not chunks:
            self.report.skipped.append(Skipped(p.display, "no text content after parsing"))
            return
        self.batch.append(p)
        self.batch_chunks.extend(chunks)
        if len(self.batch) >= self.cfg.ingest.batch_files or len(self.batch_chunks) >= 4096:
            self.flush()

    def flush(self) -> None:
        """Embed what is new and commit the batch (one atomic write)."""
        if not self.batch:
            return
        chunks = self.batch_chunks
        reuse = self.store.vectors_for_text([c.text_hash for c in chunks]) if self.store_had_rows else {}
        todo: dict[str, str] = {}
        for c in chunks:
            if c.text_hash not in reuse:
                todo.setdefault(c.text_hash, c.search_text)
        t0 = time.perf_counter()
        if todo:
            vecs = self.embedder.embed(list(todo.values()))
            reuse.update(dict(zip(todo.keys(), vecs, strict=True)))
        self.report.embed_seconds += time.perf_counter() - t0
        self.report.embedded += len(todo)
        self.report.reused_vectors += len(chunks) - sum(1 for c in chunks if c.text_hash in todo)
        for c in chunks:
            c.vector = reuse[c.text_hash]
        self.store.replace_sources([p.source for p in self.batch], chunks)
        for p in self.batch:
            if p.is_new:
                self.report.files_new += 1
            else:
                self.report.files_changed += 1
        self.report.chunks_written += len(chunks)
        self.batch, self.batch_chunks = [], []

    def tick(self, stage: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(stage, done, total)

    # -------------------------------------------------------------- files
    def run_files(self, files: list[Path], roots: list[Path], homes: dict[Path, Path | None] | None = None) -> None:
        """Ingest `files` (`homes`: each one's resolved folder, see `discover`); sources gone under `roots` leave."""
        limit = int(self.cfg.ingest.max_file_mb * 1024 * 1024)
        hashes = {st.file_hash: src for src, st in self.states.items() if st.file_hash}
        current = {str(f) for f in files}
        gone = [s for s in self.states if _under(s, roots) and s not in current]
        for s in gone:
            if self.states[s].file_hash in hashes and hashes[self.states[s].file_hash] == s:
                del hashes[self.states[s].file_hash]
        seen_here: dict[str, str] = {}
        total = len(files)
        for n, path in enumerate(files, start=1):
            self.tick("files", n - 1, total)
            self.report.files_seen += 1
            display, source = _display(path), str(path)
            try:
                self.one_file(path, display, limit, hashes, seen_here, (homes or {}).get(path))
            except SkipFile as e:
                self.report.skipped.append(Skipped(display, str(e)))
                if isinstance(e, Refused) and source in self.states:
                    gone.append(source)  # indexed before (older rules, or a link changed): it must not stay
                    if hashes.get(self.states[source].file_hash) == source:
                        del hashes[self.states[source].file_hash]
        self.flush()
        self.tick("files", total, total)
        if gone:
            self.report.chunks_deleted += self.store.delete_sources(gone)
            self.report.files_deleted += len(gone)

    def one_file(self, path: Path, display: str, limit: int, hashes: dict[str, str], seen: dict[str, str],
                 home: Path | None = None) -> None:
        """Check, read, parse and queue one file; SkipFile says why not. `home`: the folder it must stay inside."""
        source = str(path)
        kind = file_type(path)
        # Checked here, just before anything is stat'ed or read (a link may have changed since discovery).
        if home is not None and not inside(path, home):
            raise Refused(LINK_OUT)
        try:
            st = path.stat()
        except OSError as e:
            raise SkipFile(f"unreadable: {e.strerror or e}") from None
        if not path.is_file():
            raise SkipFile("not a regular file")
        if kind is None:
            raise SkipFile(
                f"unsupported file type '{path.suffix or '(no extension)'}' (supported: .pdf .docx .html .htm .md "
                ".markdown .txt .text)"
            )
        if st.st_size == 0:
            raise SkipFile("empty file")
        if st.st_size > limit:
            raise SkipFile(
                f"file too large ({st.st_size / 1e6:.1f} MB > ingest.max_file_mb {self.cfg.ingest.max_file_mb:g}); "
                "split it or raise the limit"
            )
        side_meta, side_raw = read_sidecar(path, home if home is not None else Path(source).parent.resolve())
        if self.unchanged(source, st.st_mtime, st.st_size, side_raw):
            self.report.files_unchanged += 1
            seen.setdefault(self.states[source].file_hash, display)
            return
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SkipFile(f"unreadable: {e.strerror or e}") from None
        # The access scope first (front matter is inside the file): de-duplication is per scope.
        doc = parse_bytes(data, path) if kind in META_TYPES else None
        front = meta_from_mapping(doc.meta, "front matter") if doc is not None and doc.meta else None
        meta = merge(self.defaults, front, side_meta)
        fhash = _scoped_hash(hashlib.sha256(data).hexdigest()[:16], meta)
        if fhash in seen and seen[fhash] != display:
            raise SkipFile(f"duplicate of {seen[fhash]} (same content)")
        other = hashes.get(fhash)
        if other is not None and other != source:
            raise SkipFile(f"duplicate of already indexed {_display(Path(other))} (same content)")
        seen[fhash] = display
        shash = self.source_hash(fhash, side_raw)
        old = self.states.get(source)
        if old is not None and old.source_hashes == {shash}:
            # Same bytes, only the mtime moved (e.g. touched or copied): nothing to redo.
            self.report.files_unchanged += 1
            return
        if doc is None:
            doc = parse_bytes(data, path)
        self.add(_Prepared(source, shash, fhash, st.st_mtime, st.st_size, doc, meta, display, old is None))

    # -------------------------------------------------------------- records
    def run_records(self, records: Iterable[Record], prefix: str) -> None:
        current: set[str] = set()
        for n, rec in enumerate(records, start=1):
            if n % 200 == 0:
                self.tick("records", n, 0)
            source = f"{prefix}{rec.id}"
            current.add(source)
            self.report.files_seen += 1
            body = rec.text or ""
            try:
                own = meta_from_mapping(rec.meta, f"record {rec.id}") if rec.meta else None
                meta = merge(self.defaults, own, None, file_sets_tenant=True)
            except SkipFile as e:
                self.report.skipped.append(Skipped(source, str(e)))
                if isinstance(e, Refused):
                    current.discard(source)  # whatever an earlier run stored for it goes
                continue
            shash = stable_hash({"title": rec.title, "text": body, "meta": rec.meta, "settings": self.settings_key})
            old = self.states.get(source)
            if old is not None and old.source_hashes == {shash}:
                self.report.files_unchanged += 1
                continue
            if not body.strip() and not rec.title.strip():
                self.report.skipped.append(Skipped(source, "empty record"))
                continue
            text = f"{rec.title}\n\n{body}" if rec.title and body else (body or rec.title)
            doc = ParsedDoc(text=text, title=rec.title, file_type="record")
            self.add(_Prepared(source, shash, shash, 0.0, len(text), doc, meta, source, old is None))
        self.flush()
        gone = [s for s in self.states if s.startswith(prefix) and s not in current]
        if gone:
            self.report.chunks_deleted += self.store.delete_sources(gone)
            self.report.files_deleted += len(gone)

    # -------------------------------------------------------------- finish
    def finish(self, started: float) -> IngestReport:
        self.store.optimize()
        states = self.store.source_states()
        summary = {
            "new": self.report.files_new, "changed": self.report.files_changed,
            "deleted": self.report.files_deleted, "skipped": len(self.report.skipped),
            "chunks_written": self.report.chunks_written, "chunks_deleted": self.report.chunks_deleted,
        }
        info = self.index.record_build(states, summary)
        self.report.chunks_total = info["chunks"]
        self.report.version = info["version"]
        self.report.content_hash = info["content_hash"]
        self.report.seconds = time.perf_counter() - started
        return self.report


def ingest(
    paths: Iterable[str | Path],
    index_dir: str | Path,
    cfg: RagConfig | None = None,
    *,
    defaults: DocMeta | None = None,
    rebuild: bool = False,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
    base_dir: Path | None = None,
) -> IngestReport:
    """Index files and folders into `index_dir`; returns what was done and what was skipped (with reasons)."""
    started = time.perf_counter()
    index_dir = Path(index_dir)
    paths = list(paths)
    if not paths:
        raise TailorError("nothing to ingest: give at least one file or folder")
    with write_lock(index_dir):
        index = Index.open(index_dir, cfg, create=True, rebuild=rebuild, embedder=embedder, base_dir=base_dir)
        try:
            files, skipped, homes = discover(paths, exclude=index_dir)
            roots = [Path(os.path.abspath(Path(p).expanduser())) for p in paths]
            job = _Ingestor(index, defaults or DocMeta(), progress)
            job.report.skipped.extend(skipped)
            job.run_files(files, roots, homes)
            return job.finish(started)
        finally:
            index.close()


def ingest_records(
    records: Iterable[Record],
    index_dir: str | Path,
    cfg: RagConfig | None = None,
    *,
    prefix: str = "record:",
    defaults: DocMeta | None = None,
    rebuild: bool = False,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Index in-memory documents; sources are `prefix + id`, and ids under `prefix` not given are removed."""
    started = time.perf_counter()
    index_dir = Path(index_dir)
    with write_lock(index_dir):
        index = Index.open(index_dir, cfg, create=True, rebuild=rebuild, embedder=embedder)
        try:
            job = _Ingestor(index, defaults or DocMeta(), progress)
            job.run_records(records, prefix)
            return job.finish(started)
        finally:
            index.close()
