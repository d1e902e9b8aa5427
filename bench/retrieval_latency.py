"""Retrieval latency: top-5 hybrid queries with an ACL filter at 10k and 100k chunks, against brute-force numpy.

Synthetic scale-up (stated in the results): chunk texts are Cranfield passages with a few random Cranfield words
appended (so BM25 statistics stay realistic and no two chunks are identical); dense vectors are random unit
vectors (embedding 100k chunks with MiniLM would take hours on this CPU and does not change search cost).
Each chunk gets a random tenant of 4, a random level 0-3 and random groups; each query comes from a random
caller, so every search carries the access filter, as in production.

Measured in the same run, on the same data and the same callers:
- llmtailor: `Retriever.search(mode="hybrid", top_k=5)` on LanceDB (ACL prefilter in both the vector and the
  full-text query, RRF fusion). Query embedding is excluded from these timings and measured separately with
  the real all-MiniLM-L6-v2 on the Cranfield queries.
- baseline: numpy brute force: masked `vectors @ q` + argpartition for dense, bm25s (numpy backend, same ACL as
  a weight mask) for sparse, the same RRF in Python.
- dense recall@5 of llmtailor against the exact numpy top-5 (an IVF index is approximate above
  `store.ann_min_rows`).

Usage: python bench/retrieval_latency.py [--sizes 10000,100000] [--queries 200] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmtailor.rag.acl import Caller, acl_filter, can_see  # noqa: E402
from llmtailor.rag.config import RagConfig  # noqa: E402
from llmtailor.rag.lancedb_store import LanceDBStore  # noqa: E402
from llmtailor.rag.search import Retriever, rrf  # noqa: E402
from llmtailor.rag.store import Chunk, Hit  # noqa: E402

CRANFIELD = ROOT.parent / "shared" / "data" / "cranfield"
DIM = 384
TENANTS = ["acme", "globex", "initech", "umbrella"]
GROUPS = ["hr", "eng", "legal", "sales"]


def cranfield_texts() -> tuple[list[str], list[str]]:
    docs, queries = [], []
    with (CRANFIELD / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            text = f"{row.get('title', '')}\n\n{row.get('text', '')}".strip()
            if text:
                docs.append(text)
    with (CRANFIELD / "queries.jsonl").open() as f:
        queries = [json.loads(line)["text"] for line in f]
    return docs, queries


class VectorTable:
    """Query 'embedder' that returns a precomputed vector per query text (embedding is timed separately)."""

    name = "precomputed"
    dim = DIM
    fingerprint = "precomputed"

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def embed_query(self, text: str) -> np.ndarray:
        return self.table[text]


class _Index:
    def __init__(self, store, embedder):
        self.store = store
        self.embedder = embedder

    def close(self) -> None:
        self.store.close()


def build(n: int, docs: list[str], rng: np.random.Generator, folder: Path, ann_min_rows: int):
    vocab = sorted({w for d in docs for w in d.lower().split() if w.isalpha() and len(w) > 3})
    py = random.Random(int(rng.integers(1 << 30)))
    texts, metas = [], []
    for i in range(n):
        base = docs[i % len(docs)]
        extra = " ".join(py.choice(vocab) for _ in range(py.randint(3, 8)))
        texts.append(f"{base} {extra}")
        metas.append((py.choice(TENANTS), py.randint(0, 3), py.sample(GROUPS, py.choice([0, 0, 1, 2]))))
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = LanceDBStore(folder, DIM, ann_min_rows=ann_min_rows)
    t0 = time.perf_counter()
    batch = 10_000
    for start in range(0, n, batch):
        chunks = []
        for i in range(start, min(n, start + batch)):
            tenant, level, groups = metas[i]
            chunks.append(Chunk(id=f"c{i}", source=f"/synthetic/{i // 20}.txt", text=texts[i], search_text=texts[i],
                                text_hash=f"t{i}", tenant=tenant, access_level=level, groups=groups,
                                vector=vecs[i]))
        srcs = sorted({c.source for c in chunks})
        store.replace_sources(srcs, chunks)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.optimize()
    index_s = time.perf_counter() - t0
    return store, texts, metas, vecs, write_s, index_s


def baseline_factory(texts: list[str], metas, vecs: np.ndarray):
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    t0 = time.perf_counter()
    bm = bm25s.BM25(k1=1.2, b=0.75)
    bm.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    build_s = time.perf_counter() - t0
    tenants = np.array([m[0] for m in metas])
    levels = np.array([m[1] for m in metas])
    group_sets = [set(m[2]) for m in metas]
    no_groups = np.array([not g for g in group_sets])
    chunks = [Chunk(id=f"c{i}", source="", text="") for i in range(len(texts))]

    def mask_for(caller: Caller) -> np.ndarray:
        allowed_groups = set(caller.groups)
        group_ok = no_groups.copy()
        if allowed_groups:
            group_ok |= np.fromiter((bool(g & allowed_groups) for g in group_sets), bool, len(group_sets))
        return (tenants == caller.tenant) & (levels <= caller.level) & group_ok

    def search(query: str, qvec: np.ndarray, caller: Caller, k: int = 5, candidates: int = 50) -> list[Hit]:
        mask = mask_for(caller)
        sims = vecs @ qvec
        sims = np.where(mask, sims, -np.inf)
        top = np.argpartition(-sims, candidates)[:candidates]
        top = top[np.argsort(-sims[top])]
        dense = [Hit(chunks[i], float(sims[i])) for i in top if np.isfinite(sims[i])]
        qt = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False)
        docs, scores = bm.retrieve(qt, k=candidates, show_progress=False, weight_mask=mask.astype(np.float32),
                                   n_threads=1)
        sparse = [Hit(chunks[int(i)], float(s)) for i, s in zip(docs[0], scores[0], strict=True) if s > 0]
        return rrf([(dense, 1.0), (sparse, 1.0)], 60)[:k]

    def dense_exact(qvec: np.ndarray, caller: Caller, k: int = 5) -> list[int]:
        sims = np.where(mask_for(caller), vecs @ qvec, -np.inf)
        top = np.argpartition(-sims, k)[:k]
        return [int(i) for i in top[np.argsort(-sims[top])] if np.isfinite(sims[i])]

    return search, dense_exact, build_s


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def measure_embedding(queries: list[str], n: int) -> dict:
    from llmtailor.rag.embed import load_embedder

    emb = load_embedder()
    emb.warm_up()
    emb.embed_query("warm up")
    times = []
    for q in queries[:n]:
        t = time.perf_counter()
        emb.embed_query(q)
        times.append((time.perf_counter() - t) * 1000)
    return {"model": emb.name, "queries": len(times), "p50_ms": pct(times, 50), "p95_ms": pct(times, 95)}


def run_size(n: int, docs: list[str], queries: list[str], n_queries: int, ann_min_rows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-lat-{n}-"))
    try:
        store, texts, metas, vecs, write_s, index_s = build(n, docs, rng, tmp / "lancedb", ann_min_rows)
        base_search, dense_exact, bm_build_s = baseline_factory(texts, metas, vecs)
        py = random.Random(seed)
        qtexts = [queries[i % len(queries)] for i in range(n_queries)]
        qvecs = rng.standard_normal((n_queries, DIM)).astype(np.float32)
        qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
        callers = [Caller(py.choice(TENANTS), tuple(py.sample(GROUPS, py.randint(0, 2))), py.randint(0, 3))
                   for _ in range(n_queries)]
        cfg = RagConfig().search  # hybrid, candidates 50, rrf_k 60
        retriever = Retriever(_Index(store, VectorTable(dict(zip(qtexts, qvecs, strict=False)))), cfg,
                              parallel=True)
        # The same vector for a repeated text is fine: the table maps each text to its first vector.
        table = retriever.index.embedder.table
        for _ in range(5):  # warm caches / index loading
            retriever.search(qtexts[0], caller=callers[0], mode="hybrid", top_k=5)
            base_search(qtexts[0], table[qtexts[0]], callers[0])
        ours, base, recalls, leaks, served = [], [], [], 0, 0
        for q, caller in zip(qtexts, callers, strict=True):
            qv = table[q]
            t = time.perf_counter()
            res = retriever.search(q, caller=caller, mode="hybrid", top_k=5)
            ours.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            base_search(q, qv, caller)
            base.append((time.perf_counter() - t) * 1000)
            leaks += sum(1 for h in res.hits if not can_see(caller, h.chunk.record()))
            served += len(res.hits)
            exact = dense_exact(qv, caller)
            got = [int(h.chunk.id[1:]) for h in store.search_dense(qv, 5, acl_filter(caller))]
            if exact:
                recalls.append(len(set(exact) & set(got)) / len(exact))
        ann = any(ix.columns == ["vector"] for ix in store._table().list_indices())
        retriever.close()
        return {
            "chunks": n,
            "queries": n_queries,
            "vector_index": "IVF_FLAT (on disk)" if ann else "exact (in memory)",
            "write_s": round(write_s, 1),
            "index_build_s": round(index_s, 1),
            "baseline_bm25_build_s": round(bm_build_s, 1),
            "llmtailor_hybrid_ms": {"p50": pct(ours, 50), "p95": pct(ours, 95), "mean": round(float(np.mean(ours)), 2)},
            "numpy_baseline_hybrid_ms": {"p50": pct(base, 50), "p95": pct(base, 95),
                                         "mean": round(float(np.mean(base)), 2)},
            "ratio_p50_llmtailor_over_baseline": round(pct(ours, 50) / max(pct(base, 50), 1e-9), 2),
            "ratio_p95_llmtailor_over_baseline": round(pct(ours, 95) / max(pct(base, 95), 1e-9), 2),
            "dense_recall@5_vs_exact": round(float(np.mean(recalls)), 4) if recalls else None,
            "acl_leaks": leaks,
            "results_served": served,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ann-min-rows", type=int, default=RagConfig().store.ann_min_rows)
    ap.add_argument("--ivf-sizes", default="100000",
                    help="Sizes also measured with the on-disk IVF index forced (store.ann_min_rows 0); '' = none.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not CRANFIELD.exists():
        sys.exit(f"{CRANFIELD}: Cranfield (BEIR) folder not found; it is read from ../shared/data/cranfield")
    docs, queries = cranfield_texts()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {"sizes": [], "embedding": None}
    for n in sizes:
        print(f"[latency] {n} chunks ...", file=sys.stderr, flush=True)
        r = run_size(n, docs, queries, args.queries, args.ann_min_rows, args.seed)
        print(json.dumps(r), file=sys.stderr, flush=True)
        results["sizes"].append(r)
    for n in [int(s) for s in args.ivf_sizes.split(",") if s.strip()]:
        print(f"[latency] {n} chunks, IVF index forced ...", file=sys.stderr, flush=True)
        r = run_size(n, docs, queries, args.queries, 0, args.seed)
        print(json.dumps(r), file=sys.stderr, flush=True)
        results["sizes"].append(r)
    print("[latency] query embedding (all-MiniLM-L6-v2) ...", file=sys.stderr, flush=True)
    results["embedding"] = measure_embedding(queries, min(args.queries, len(queries)))
    results["machine"] = machine()
    results["command"] = "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    from llmtailor.io import write_json

    combined_path = args.out / "retrieval.json"  # one file; each script fills its own section
    combined = json.loads(combined_path.read_text()) if combined_path.exists() else {}
    combined["latency"] = results
    write_json(combined_path, combined)
    print(json.dumps(results, indent=2))


def machine() -> dict:
    import lancedb

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
        "lancedb": lancedb.__version__,
        "note": "2 CPU cores shared with a concurrent training job; compare ratios, not absolute times",
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
