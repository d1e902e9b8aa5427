"""Retrieval quality on Cranfield (BEIR format) and ingest throughput on real files.

1. A plain BM25 baseline measured in this run with bm25s, with the settings of the reference run in
   ../shared/data/cranfield/SOURCE.md (k1 1.5, b 0.75, English stop words, Snowball stemmer, title + text,
   nDCG gain 2^rel - 1). That reference is this project's own earlier bm25s run, not a published figure (none
   exists for this conversion); the report compares against the baseline measured in the same run.
2. llmtailor `eval retrieval` (the same code as `tailor eval retrieval --beir`): the corpus is ingested with
   all-MiniLM-L6-v2 into a LanceDB index, then dense, sparse (LanceDB BM25 full-text search) and hybrid (RRF)
   are scored with nDCG@10, MRR@10, recall@10, hit rate.
3. RRF settings explored (rrf_k and the dense/sparse weights) on the same queries. These are reported as
   tried, with the default settings as the headline: tuning on the test queries would overstate quality.
4. Re-ingest of the unchanged corpus (should be near zero work), and ingest throughput on real files
   (Cranfield documents written out as .txt files; files/s, chunks/s, embedding time separated).

Usage: python bench/retrieval_quality.py [--index DIR] [--ingest-files 300] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmtailor.rag.config import RagConfig  # noqa: E402
from llmtailor.rag.retrieval_eval import (  # noqa: E402
    BEIR_PREFIX,
    evaluate,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)

CRANFIELD = ROOT.parent / "shared" / "data" / "cranfield"
REFERENCE_BM25 = {"ndcg@10": 0.362, "recall@10": 0.400,
                  "source": "../shared/data/cranfield/SOURCE.md: this project's own earlier bm25s run, not published"}


def bm25_baseline(folder: Path) -> dict:
    import bm25s
    import Stemmer

    records, queries = load_beir(folder)
    ids = [r.id for r in records]
    texts = [f"{r.title} {r.text}".strip() for r in records]
    stemmer = Stemmer.Stemmer("english")
    model = bm25s.BM25(k1=1.5, b=0.75)
    model.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    nd = mr = rc = 0.0
    lat = []
    for q in queries:
        t = time.perf_counter()
        docs, _ = model.retrieve(bm25s.tokenize([q.text], stopwords="en", stemmer=stemmer, show_progress=False),
                                 k=10, show_progress=False, n_threads=1)
        lat.append((time.perf_counter() - t) * 1000)
        ranked = [ids[int(i)] for i in docs[0]]
        nd += ndcg_at_k(ranked, q.rels, 10)
        mr += mrr_at_k(ranked, q.rels, 10)
        rc += recall_at_k(ranked, q.rels, 10)
    n = len(queries)
    lat.sort()
    return {"ndcg@10": round(nd / n, 4), "mrr@10": round(mr / n, 4), "recall@10": round(rc / n, 4),
            "latency_ms": {"p50": round(lat[n // 2], 2), "p95": round(lat[int(n * 0.95)], 2)},
            "settings": "bm25s k1=1.5 b=0.75, English stop words, Snowball stemmer, title + text, whole documents"}


def ingest_throughput(folder: Path, n_files: int, work: Path) -> dict:
    """Write Cranfield documents as real .txt files, ingest them with MiniLM, then re-ingest unchanged."""
    from llmtailor.rag.ingest import ingest

    records, _ = load_beir(folder)
    docs = work / "files"
    docs.mkdir(parents=True)
    written = 0
    for r in records:
        if written >= n_files:
            break
        if not r.text.strip():
            continue
        (docs / f"cran-{r.id}.txt").write_text(f"{r.title}\n\n{r.text}\n", encoding="utf-8")
        written += 1
    cfg = RagConfig()
    first = ingest([docs], work / "index", cfg)
    second = ingest([docs], work / "index", cfg)
    return {
        "files": written,
        "embedding_model": cfg.embedding.model,
        "first": {
            "seconds": round(first.seconds, 2), "embed_seconds": round(first.embed_seconds, 2),
            "chunks": first.chunks_written, "files_per_s": round(written / first.seconds, 1),
            "chunks_per_s": round(first.chunks_written / first.seconds, 1),
            "chunks_per_s_excluding_embedding": round(
                first.chunks_written / max(first.seconds - first.embed_seconds, 1e-9), 1),
        },
        "reingest_unchanged": {"seconds": round(second.seconds, 2), "embedded": second.embedded,
                               "files_unchanged": second.files_unchanged, "chunks_written": second.chunks_written},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beir", type=Path, default=CRANFIELD)
    ap.add_argument("--index", type=Path, default=None, help="Index folder (kept; default: a temporary folder).")
    ap.add_argument("--ingest-files", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if not (args.beir / "corpus.jsonl").exists():
        sys.exit(f"{args.beir}: not a BEIR folder (corpus.jsonl missing)")
    from llmtailor.io import write_json
    from llmtailor.rag.index import Index
    from llmtailor.rag.retrieval_eval import run_beir
    from llmtailor.rag.search import Retriever

    tmp = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    index_dir = args.index or tmp / "cranfield-index"
    out: dict = {"dataset": str(args.beir), "reference_bm25": REFERENCE_BM25}
    try:
        print("[quality] BM25 baseline (bm25s) ...", file=sys.stderr, flush=True)
        out["bm25_baseline_this_run"] = bm25_baseline(args.beir)
        cfg = RagConfig()
        print("[quality] ingest + evaluate (MiniLM, LanceDB) ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        report = run_beir(args.beir, index_dir, cfg)
        out["llmtailor"] = {"config": {"chunking": cfg.chunking.model_dump(), "search": cfg.search.model_dump()},
                            "seconds": round(time.perf_counter() - t, 1), **report}
        print("[quality] re-ingest unchanged corpus ...", file=sys.stderr, flush=True)
        again = run_beir(args.beir, index_dir, cfg, modes=["sparse"], limit=1)
        out["reingest_unchanged_corpus"] = {k: again["ingest"][k] for k in
                                            ("seconds", "embedded", "files_unchanged", "chunks_written")}
        print("[quality] RRF settings ...", file=sys.stderr, flush=True)
        _, queries = load_beir(args.beir)
        index = Index.open(index_dir, cfg)
        tried = []
        try:
            for rrf_k in (60, 20, 100):
                for dw, sw in ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0), (1.0, 0.75), (0.75, 1.0)):
                    if rrf_k != 60 and (dw, sw) != (1.0, 1.0):
                        continue
                    scfg = cfg.search.model_copy(update={"rrf_k": rrf_k, "dense_weight": dw, "sparse_weight": sw})
                    r = Retriever(index, scfg, parallel=False)
                    m = evaluate(r, queries, modes=["hybrid"], ks=[10],
                                 doc_of=lambda c: c.source[len(BEIR_PREFIX):])["hybrid"]
                    tried.append({"rrf_k": rrf_k, "dense_weight": dw, "sparse_weight": sw,
                                  "ndcg@10": m["ndcg@10"], "mrr@10": m["mrr@10"], "recall@10": m["recall@10"]})
                    print(json.dumps(tried[-1]), file=sys.stderr, flush=True)
        finally:
            index.close()
        out["rrf_settings_tried"] = tried
        print("[quality] ingest throughput on real files ...", file=sys.stderr, flush=True)
        out["ingest_throughput"] = ingest_throughput(args.beir, args.ingest_files, tmp / "throughput")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["command"] = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    combined_path = args.out / "retrieval.json"  # one file; each script fills its own section
    combined = json.loads(combined_path.read_text()) if combined_path.exists() else {}
    combined["quality"] = out
    write_json(combined_path, combined)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
