"""Cold `tailor rag query` alone: a new process per query on a 100k-chunk index, against the same command with
LanceDB imported eagerly (its REST client's API classes loaded at import, as LanceDB does by itself) and
`tailor --help`, alternating run by run.

The index and the commands are those of bench/retrieval_latency.py (`cold_cli`), which measures the same thing at
the end of its much longer run; this script skips the warm-search systems so the cold figure can be refreshed in a
few minutes. Results: bench/results/cold_query.{json,md}.

    python bench/cold_query.py [--chunks 100000] [--cold-runs 5] [--with-torch-runtime]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from retrieval_latency import (  # noqa: E402
    DIM,
    LanceDBStore,
    cold_cli,
    cranfield_texts,
    load,
    log,
    machine,
    render_cold,
    synthetic,
    write_store,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--with-torch-runtime", action="store_true",
                    help="Also run the sentence-transformers query runtime (8 s a run).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    args.cold_skip_torch = not args.with_torch_runtime
    if args.cold_runs < 5:
        log(f"--cold-runs {args.cold_runs}: below the 5 runs the project's benchmark standard asks for")
    docs, queries = cranfield_texts()
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    loads = [load()]
    try:
        texts, metas, vecs = synthetic(args.chunks, docs, rng)
        store = LanceDBStore(tmp / "idx" / "lancedb", DIM, ann_min_rows=10**9, memory="off")
        log(f"writing {args.chunks:,} chunks ...")
        write_store(store, texts, metas, vecs)
        loads.append(load())
        log("cold runs ...")
        cold = cold_cli(tmp / "idx", store, queries[: args.queries], args)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loads += cold["load_avg_1min"]
    results = {"sizes": [{"chunks": args.chunks, "cold_cli": cold}], "ivf": [], "embedding": None,
               "machine": machine(loads), "command": "python " + " ".join(["bench/cold_query.py", *sys.argv[1:]])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_query.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    m = results["machine"]
    if cold["same_results_eager_lancedb"] is False:
        log("the eager and deferred imports returned different results")
    wall = cold["wall_s"]
    ratio = wall["rag_query_eager_lancedb"]["median"] / max(wall["rag_query"]["median"], 1e-9)
    md = ["# Cold `tailor rag query`", "", f"`{results['command']}`; {m['note']}", "",
          f"Eager LanceDB import / deferred (medians): **{ratio:.2f}x**. Every run of the default command under "
          f"2 s: **{wall['rag_query']['max'] < 2.0}** (max {wall['rag_query']['max']:.2f} s).", ""]
    md += render_cold(cold)[1:]
    (args.out / "cold_query.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
