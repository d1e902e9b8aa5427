"""Render bench/results/retrieval.md from retrieval.json (sections written by retrieval_quality/latency.py).

Nothing here measures anything: it only formats what the two benchmark scripts wrote.
Usage: python bench/retrieval_report.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(q: dict, lat: dict) -> str:
    m = lat["machine"]
    lines = [
        "# Retrieval benchmarks",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['cpu']}), {m['platform']}, Python {m['python']}, "
        f"LanceDB {m['lancedb']}. {m['note']}.",
        "",
        "Produced by:",
        "",
        "```bash",
        q["command"],
        lat["command"],
        "python bench/retrieval_report.py",
        "```",
        "",
        "## Quality: Cranfield (BEIR format, 1,400 documents, 225 queries, graded qrels)",
        "",
        "Documents are chunked (max 200 MiniLM tokens, overlap 32) and chunk hits are collapsed to documents before"
        " scoring; nDCG uses gain 2^rel - 1. Dense = all-MiniLM-L6-v2 cosine; sparse = LanceDB BM25 full-text"
        " search; hybrid = reciprocal rank fusion of both (default settings: rrf_k 60, weights 1 / 1).",
        "",
        "| system | nDCG@10 | MRR@10 | recall@10 | hit rate@10 |",
        "|---|---|---|---|---|",
    ]
    pub = q["published_bm25"]
    lines.append(f"| published BM25 reference (SOURCE.md) | {f3(pub['ndcg@10'])} | - | {f3(pub['recall@10'])} | - |")
    b = q["bm25_baseline_this_run"]
    lines.append(f"| BM25 baseline measured in this run (bm25s, same settings) | {f3(b['ndcg@10'])} | "
                 f"{f3(b['mrr@10'])} | {f3(b['recall@10'])} | - |")
    modes = q["llmtailor"]["modes"]
    for mode in ("sparse", "dense", "hybrid"):
        r = modes[mode]
        name = {"sparse": "llmtailor sparse (BM25, chunks)", "dense": "llmtailor dense (MiniLM)",
                "hybrid": "**llmtailor hybrid (RRF, default)**"}[mode]
        lines.append(f"| {name} | {f3(r['ndcg@10'])} | {f3(r['mrr@10'])} | {f3(r['recall@10'])} | "
                     f"{f3(r.get('hit_rate@10'))} |")
    h = modes["hybrid"]["ndcg@10"]
    verdict = "above" if h > pub["ndcg@10"] else "below"
    lines += [
        "",
        f"Hybrid nDCG@10 {h:.3f} is **{verdict}** the published BM25 figure {pub['ndcg@10']:.3f} "
        f"({(h / pub['ndcg@10'] - 1) * 100:+.1f} %), with the default settings.",
        "",
        "RRF settings tried on the same queries (reported, not adopted: choosing them on the test queries would"
        " overstate quality; the default stays rrf_k 60, weights 1 / 1):",
        "",
        "| rrf_k | dense weight | sparse weight | nDCG@10 | MRR@10 | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for t in q["rrf_settings_tried"]:
        lines.append(f"| {t['rrf_k']} | {t['dense_weight']} | {t['sparse_weight']} | {f3(t['ndcg@10'])} | "
                     f"{f3(t['mrr@10'])} | {f3(t['recall@10'])} |")
    lines += [
        "",
        "Query latency in this evaluation (Cranfield index, {} chunks, includes query embedding):".format(
            q["llmtailor"]["chunks"]),
        "",
        "| mode | p50 ms | p95 ms | of which embedding p50 ms |",
        "|---|---|---|---|",
    ]
    for mode in ("sparse", "dense", "hybrid"):
        lm = modes[mode]["latency_ms"]
        lines.append(f"| {mode} | {lm['p50']:.1f} | {lm['p95']:.1f} | {lm['embed_p50']:.1f} |")
    lines += [
        "",
        "## Latency: top-5 hybrid with an ACL filter, 10k and 100k chunks",
        "",
        "Synthetic scale-up: Cranfield passages with a few random Cranfield words appended (realistic BM25"
        " statistics, no duplicates), random unit vectors (384 dims) for the dense side, 4 tenants with random"
        " levels and groups; every query comes from a random caller, so every search carries the access filter."
        " Search timings exclude query embedding, which is measured separately below with the real model."
        " Baseline, same run, same data, same callers: numpy brute force (masked matrix product + argpartition)"
        " for dense, bm25s with the ACL as a weight mask for sparse, the same RRF.",
        "",
        "| chunks | dense index | llmtailor p50 ms | llmtailor p95 ms | numpy baseline p50 ms | baseline p95 ms"
        " | ratio p50 | ratio p95 | dense recall@5 vs exact | ACL leaks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in lat["sizes"]:
        o, bl = s["llmtailor_hybrid_ms"], s["numpy_baseline_hybrid_ms"]
        lines.append(
            f"| {s['chunks']:,} | {s['vector_index']} | {o['p50']:.1f} | {o['p95']:.1f} | {bl['p50']:.1f} | "
            f"{bl['p95']:.1f} | {s['ratio_p50_llmtailor_over_baseline']:.2f} | "
            f"{s['ratio_p95_llmtailor_over_baseline']:.2f} | {s['dense_recall@5_vs_exact']} | {s['acl_leaks']} "
            f"of {s['results_served']} |"
        )
    e = lat["embedding"]
    exact = [s for s in lat["sizes"] if s["chunks"] >= 100_000 and s["vector_index"].startswith("exact")]
    if exact:
        p95 = exact[0]["llmtailor_hybrid_ms"]["p95"]
        lines += [
            "",
            f"Target (issue): p95 under 100 ms at 100k chunks, aim 20 ms. This run: search p95 {p95:.1f} ms at 100k"
            f" (**{'met' if p95 < 100 else 'not met'}**), p95 + embedding p95 = {p95 + e['p95_ms']:.1f} ms; see the"
            " machine note above: the same code measured on an idle core will be lower, the ratio to the baseline"
            " is the portable figure.",
        ]
    lines += [
        "",
        f"Query embedding ({e['model']}, one thread, {e['queries']} Cranfield queries): p50 {e['p50_ms']:.1f} ms,"
        f" p95 {e['p95_ms']:.1f} ms. End-to-end top-5 hybrid at 100k chunks is therefore about search p50 +"
        " embedding p50.",
        "",
        "Ratio = llmtailor / baseline (below 1: llmtailor faster). Index build times (write + FTS/scalar indexes):"
        + "".join(f" {s['chunks']:,} chunks ({s['vector_index']}) {s['write_s']} s + {s['index_build_s']} s;"
                  for s in lat["sizes"]),
        "",
        "## Ingest",
        "",
    ]
    it = q["ingest_throughput"]
    fi, re_ = it["first"], it["reingest_unchanged"]
    lines += [
        f"Real files: {it['files']} Cranfield documents written as .txt files, ingested with {it['embedding_model']}:",
        "",
        "| run | seconds | files/s | chunks | chunks/s | embedding s | chunks/s without embedding |",
        "|---|---|---|---|---|---|---|",
        f"| first ingest | {fi['seconds']} | {fi['files_per_s']} | {fi['chunks']} | {fi['chunks_per_s']} | "
        f"{fi['embed_seconds']} | {fi['chunks_per_s_excluding_embedding']} |",
        f"| re-ingest, unchanged | {re_['seconds']} | - | {re_['chunks_written']} written, {re_['embedded']} embedded"
        f" | - | 0 | - |",
        "",
        f"Cranfield corpus as records ({q['llmtailor']['documents']} documents -> {q['llmtailor']['chunks']} chunks,"
        f" `tailor eval retrieval --beir` path): {q['llmtailor']['ingest']['seconds']:.0f} s, of which embedding"
        f" {q['llmtailor']['ingest']['embed_seconds']:.0f} s"
        f" ({q['llmtailor']['chunks'] / max(q['llmtailor']['ingest']['embed_seconds'], 1e-9):.1f} chunks/s embedded).",
        "",
        f"Re-ingest of the unchanged Cranfield corpus ({q['reingest_unchanged_corpus']['files_unchanged']} records):"
        f" {q['reingest_unchanged_corpus']['seconds']} s, {q['reingest_unchanged_corpus']['embedded']} passages"
        " embedded.",
        "",
        "Embedding dominates ingest on this shared 2-core CPU (two training jobs were running on the same cores"
        " during these runs; ../shared/STACK.md measured about 110 MiniLM passages/s on 2 idle cores); the rest of"
        " the pipeline (parse, chunk, write, index) runs at the 'without embedding' rate. A GPU"
        " (`rag.embedding.device: cuda`) removes most of the embedding time.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    from llmtailor.io import write_text

    data = json.loads((args.results / "retrieval.json").read_text())
    missing = [k for k in ("quality", "latency") if k not in data]
    if missing:
        sys.exit(f"{args.results / 'retrieval.json'}: no {' / '.join(missing)} section; run bench/retrieval_"
                 f"{missing[0]}.py first")
    write_text(args.results / "retrieval.md", render(data["quality"], data["latency"]))
    print(args.results / "retrieval.md")


if __name__ == "__main__":
    main()
