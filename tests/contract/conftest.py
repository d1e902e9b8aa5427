"""One fixture, every backend: the store contract suite runs on LanceDB (exact and IVF) and Qdrant local mode."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmtailor.rag.embed import HashingEmbedder
from llmtailor.rag.store import Chunk

DIM = 384
WORDS = (
    "refund invoice payroll holiday leave contract vendor security password laptop travel expense budget "
    "audit privacy retention backup incident onboarding salary pension insurance office parking badge"
).split()
TENANTS = ["", "acme", "globex", "initech"]
GROUPS = ["hr", "eng", "legal", "sales"]


def make_chunks(n: int, seed: int = 0, sources: int = 20) -> list[Chunk]:
    """Random multi-tenant chunks with random ACLs and metadata, vectors from the hashing embedder."""
    rng = random.Random(seed)
    emb = HashingEmbedder(DIM)
    chunks = []
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]
    vecs = emb.embed(texts)
    for i, (text, vec) in enumerate(zip(texts, vecs, strict=True)):
        src = f"/docs/file{i % sources}.md"
        chunks.append(
            Chunk(
                id=f"c{i:05d}",
                source=src,
                text=text,
                search_text=text,
                text_hash=f"h{i:05d}",
                source_hash=f"sh{i % sources}",
                file_hash=f"fh{i % sources}",
                mtime=1000.0 + i % sources,
                size=100 + i % sources,
                title=f"File {i % sources}",
                heading_path="A > B" if i % 3 else "",
                page=i % 5,
                page_end=i % 5,
                char_start=i * 10,
                char_end=i * 10 + len(text),
                chunk_index=i // sources,
                tenant=rng.choice(TENANTS),
                access_level=rng.randint(0, 3),
                groups=rng.sample(GROUPS, rng.choice([0, 0, 1, 2])),
                category=rng.choice(["hr", "it", "finance", ""]),
                date=rng.choice(["", "2025-01-15", "2025-06-30", "2026-02-01"]),
                file_type="markdown",
                meta={"k": i % 3, "owner": "ops"},
                vector=vec,
            )
        )
    return chunks


def by_source(chunks: list[Chunk]) -> dict[str, list[Chunk]]:
    out: dict[str, list[Chunk]] = {}
    for c in chunks:
        out.setdefault(c.source, []).append(c)
    return out


@pytest.fixture(params=["lancedb", "lancedb-memory", "lancedb-ivf", "qdrant"])
def backend(request):
    """lancedb: Lance's own exact scan (memory off); lancedb-memory: the in-memory exact index, built on every
    version's first search; lancedb-ivf: an IVF index (approximate); qdrant: local mode."""
    return request.param


@pytest.fixture()
def make_store(backend, tmp_path):
    """Factory: an empty store of the parametrised backend."""
    made = []

    def factory():
        if backend.startswith("lancedb"):
            from llmtailor.rag.lancedb_store import LanceDBStore

            ann = 256 if backend.endswith("ivf") else 10**9
            memory = "eager" if backend.endswith("memory") else "off"
            store = LanceDBStore(tmp_path / f"lancedb{len(made)}", DIM, ann_min_rows=ann, memory=memory)
        else:
            from llmtailor.rag.qdrant_store import QdrantStore

            store = QdrantStore(DIM, f"test{len(made)}")
        made.append(store)
        return store

    yield factory
    for s in made:
        s.close()


@pytest.fixture()
def filled_store(make_store):
    """A store holding 400 random chunks (enough for LanceDB's IVF index in the -ivf variant)."""
    chunks = make_chunks(400)
    store = make_store()
    groups = by_source(chunks)
    srcs = sorted(groups)
    for i in range(0, len(srcs), 7):
        part = srcs[i : i + 7]
        store.replace_sources(part, [c for s in part for c in groups[s]])
    store.optimize()
    return store, chunks


@pytest.fixture()
def query_vecs():
    emb = HashingEmbedder(DIM)
    rng = np.random.default_rng(1)
    return [emb.embed_query(" ".join(rng.choice(WORDS, size=3))) for _ in range(10)]


@pytest.fixture()
def chunk_factory():
    """`make_chunks` as a fixture (test modules do not import conftest)."""
    return make_chunks
