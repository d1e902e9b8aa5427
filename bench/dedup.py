"""Near-duplicate removal: rensa (what `tailor data prepare` uses) against datasketch, same rows, same run.

Both sides run the same algorithm with the same settings: MinHash over word 3-gram shingles of the user and
assistant turns (128 permutations, seed 42), LSH with the bands llmtailor picks, every LSH candidate verified by
exact Jaccard >= 0.85, first occurrence kept. The rensa side is llmtailor's own `near_dedup`; the datasketch side
is the same loop written with `datasketch.MinHash.update_batch` and `MinHashLSH`. Rows are synthetic tickets: 30 %
are copies of an earlier row with one word changed (Jaccard about 0.9, must go) and 10 % with five changed (about
0.6, must stay). Ground truth: the same greedy pass with exact Jaccard against every kept row (no LSH).
The sides alternate within one process, `--repeats` times each; the figures are median (min-max) seconds.

Usage: python bench/dedup.py [--rows 3000] [--repeats 5]   (needs `pip install datasketch`, a benchmark-only extra)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmtailor.data.config import DedupConfig  # noqa: E402
from llmtailor.data.dedup import MINHASH_SEED, _num_bands, jaccard, near_dedup, shingles  # noqa: E402
from llmtailor.data.rows import Row, system_text, words  # noqa: E402


def make_rows(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts: list[list[str]] = []
    for _ in range(n):
        r = rng.random()
        if texts and r < 0.4:
            words_ = list(rng.choice(texts))
            for _ in range(1 if r < 0.3 else 5):
                words_[rng.randrange(len(words_))] = rng.choice(vocab)
        else:
            words_ = [rng.choice(vocab) for _ in range(60)]
        texts.append(words_)
    return [Row([{"role": "user", "content": " ".join(t[:20])}, {"role": "assistant", "content": " ".join(t[20:])}])
            for t in texts]


def datasketch_dedup(rows: list[Row], cfg: DedupConfig) -> list[Row]:
    from datasketch import MinHash, MinHashLSH

    bands = _num_bands(cfg.num_perm)
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, cfg.num_perm // bands))
    kept: list[Row] = []
    kept_sets: list[set[str]] = []
    kept_systems: list[str] = []
    for row in rows:
        grams = shingles(words(row.messages), cfg.ngram)
        system = system_text(row.messages)
        mh = MinHash(num_perm=cfg.num_perm, seed=MINHASH_SEED)
        mh.update_batch([g.encode("utf-8") for g in sorted(grams)])
        if not any(kept_systems[k] == system and jaccard(grams, kept_sets[k]) >= cfg.threshold
                   for k in lsh.query(mh)):
            lsh.insert(len(kept), mh)
            kept.append(row)
            kept_sets.append(grams)
            kept_systems.append(system)
    return kept


def exact_dedup_truth(rows: list[Row], cfg: DedupConfig) -> list[int]:
    kept: list[int] = []
    sets = [shingles(words(r.messages), cfg.ngram) for r in rows]
    for i, s in enumerate(sets):
        if not any(jaccard(s, sets[k]) >= cfg.threshold for k in kept):
            kept.append(i)
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    cfg = DedupConfig()
    rows = make_rows(args.rows)
    index = {id(r): i for i, r in enumerate(rows)}
    truth = set(exact_dedup_truth(rows, cfg))
    dropped_truth = set(range(len(rows))) - truth
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"rensa": [], "datasketch": []}
    result: dict[str, dict] = {}
    for rep in range(args.repeats):
        order = ["rensa", "datasketch"] if rep % 2 == 0 else ["datasketch", "rensa"]
        for side in order:
            t = time.perf_counter()
            kept = near_dedup(rows, cfg)[0] if side == "rensa" else datasketch_dedup(rows, cfg)
            times[side].append(time.perf_counter() - t)
            kept_ids = {index[id(r)] for r in kept}
            dropped = set(range(len(rows))) - kept_ids
            result[side] = {"kept": len(kept_ids), "dropped": len(dropped),
                            "recall": round(len(dropped & dropped_truth) / max(len(dropped_truth), 1), 4),
                            "false_drops": len(dropped - dropped_truth)}
    load_after = os.getloadavg()
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} cores={os.cpu_count()}",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "rows": len(rows), "true_duplicates": len(dropped_truth), "load_average_before": [round(x, 2) for x in
                                                                                         load_before],
        "load_average_after": [round(x, 2) for x in load_after], "settings": cfg.model_dump(),
        "sides": {s: {"seconds": {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                                  "max": round(max(v), 3), "all": [round(x, 3) for x in v]}, **result[s]}
                  for s, v in times.items()},
    }
    ratio = summary["sides"]["datasketch"]["seconds"]["median"] / summary["sides"]["rensa"]["seconds"]["median"]
    summary["datasketch_over_rensa"] = round(ratio, 2)
    loaded = max(load_before[0], load_after[0]) > 1.5
    md = [
        "# Near-duplicate removal: rensa vs datasketch",
        "",
        f"Measured {summary['date']} on {summary['machine']}: `{summary['command']}`. Load average before/after: "
        f"{summary['load_average_before']} / {summary['load_average_after']}"
        + (" (measured on a loaded machine: absolute times are inflated; the two sides alternate in one process, "
           "so their ratio is the comparable figure)" if loaded else "") + ".",
        "",
        f"{len(rows)} synthetic ticket rows, {len(dropped_truth)} of them true near-duplicates (Jaccard >= "
        f"{cfg.threshold} on word {cfg.ngram}-grams against an earlier kept row, checked exhaustively). Same "
        f"algorithm on both sides ({cfg.num_perm} permutations, {_num_bands(cfg.num_perm)} bands, candidates "
        f"verified by exact Jaccard); {args.repeats} alternating repeats each.",
        "",
        "| library | seconds median (min-max) | rows dropped | recall of true duplicates | wrong drops |",
        "|---|---:|---:|---:|---:|",
    ]
    for side, label in (("rensa", "rensa (llmtailor `near_dedup`)"), ("datasketch", "datasketch 2.0")):
        s = summary["sides"][side]
        t = s["seconds"]
        md.append(f"| {label} | {t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}) | {s['dropped']} | {s['recall']} | "
                  f"{s['false_drops']} |")
    md += ["", f"**datasketch / rensa time: {ratio:.1f}x** (medians).", ""]
    from llmtailor.io import write_json, write_text

    write_json(args.out / "dedup.json", summary)
    write_text(args.out / "dedup.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
