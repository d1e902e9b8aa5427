"""Duplicate removal: exact (normalised text digest), then near-duplicates with MinHash LSH (rensa).

Duplicates make a small model memorise a few answers and leak between train and eval. The first
occurrence of each group is kept, so source order decides which copy survives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from llmtailor.data.config import DedupConfig
from llmtailor.data.rows import Row, exact_key, system_text, words

MINHASH_SEED = 42


OnDrop = Callable[[Row, Row, str, float], object]


def exact_dedup(rows: list[Row], on_drop: OnDrop | None = None) -> tuple[list[Row], int]:
    """Rows whose normalised conversation was not seen before; returns (kept, dropped count).

    `on_drop(dropped, kept_copy, "exact", 1.0)` is told of each drop, so the data card can list them."""
    seen: dict[str, Row] = {}
    kept: list[Row] = []
    for row in rows:
        key = exact_key(row.messages)
        first = seen.get(key)
        if first is None:
            seen[key] = row
            kept.append(row)
        elif on_drop is not None:
            on_drop(row, first, "exact", 1.0)
    return kept, len(rows) - len(kept)


def shingles(tokens: list[str], n: int) -> set[str]:
    """Word n-grams; a text shorter than n is one shingle."""
    if len(tokens) <= n:
        return {" ".join(tokens)}
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _num_bands(num_perm: int) -> int:
    """About 4 rows per band: an LSH S-curve well below any useful threshold (high recall); candidates are verified."""
    target = max(1, num_perm // 4)
    return max(d for d in range(1, target + 1) if num_perm % d == 0)


def _new_lsh(cfg: DedupConfig) -> Any:
    from rensa import RMinHashLSH

    return RMinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, num_bands=_num_bands(cfg.num_perm))


def _signature(row: Row, cfg: DedupConfig) -> tuple[set[str], str, Any]:
    """(word shingles, normalised system turn, MinHash): what two rows are compared on."""
    from rensa import RMinHash

    grams = shingles(words(row.messages), cfg.ngram)
    mh = RMinHash(num_perm=cfg.num_perm, seed=MINHASH_SEED)
    mh.update(sorted(grams))
    return grams, system_text(row.messages), mh


def near_dedup(
    rows: list[Row], cfg: DedupConfig, advance: Callable[[int], object] | None = None, on_drop: OnDrop | None = None
) -> tuple[list[Row], int]:
    """Drop rows whose user/assistant word shingles have Jaccard >= threshold with an earlier kept row.

    System turns are left out of the shingles (a shared system prompt would make unrelated rows look alike)
    but must match exactly for two rows to count as duplicates.
    """
    lsh = _new_lsh(cfg)
    kept: list[Row] = []
    kept_sets: list[set[str]] = []
    kept_systems: list[str] = []
    for row in rows:
        grams, system, mh = _signature(row, cfg)
        best = max(((jaccard(grams, kept_sets[key]), -key) for key in lsh.query(mh) if kept_systems[key] == system),
                   default=None)
        duplicate = best is not None and best[0] >= cfg.threshold
        if duplicate and on_drop is not None:
            on_drop(row, kept[-best[1]], "near", round(best[0], 4))
        if not duplicate:
            lsh.insert(len(kept), mh)
            kept.append(row)
            kept_sets.append(grams)
            kept_systems.append(system)
        if advance:
            advance(1)
    return kept, len(rows) - len(kept)


@dataclass(frozen=True)
class Match:
    """Query row `query` duplicates reference row `reference` (indexes into the two lists)."""

    query: int
    reference: int
    kind: Literal["exact", "near"]
    similarity: float


def find_matches(reference: list[Row], queries: list[Row], cfg: DedupConfig) -> list[Match]:
    """For each query row that duplicates some reference row, its closest match (lowest index on ties).

    The tests are dedup's own (normalised text for exact, Jaccard >= threshold with an equal system turn for
    near), so a query row is matched exactly when dedup would have dropped it as a copy of a reference row.
    Used for train/test leakage: reference = train rows, queries = test rows.
    """
    exact: dict[str, int] = {}
    for i, row in enumerate(reference):
        exact.setdefault(exact_key(row.messages), i)
    lsh = _new_lsh(cfg)
    signatures: list[tuple[set[str], str]] = []
    for i, row in enumerate(reference):
        grams, system, mh = _signature(row, cfg)
        lsh.insert(i, mh)
        signatures.append((grams, system))
    matches: list[Match] = []
    for q, row in enumerate(queries):
        hit = exact.get(exact_key(row.messages))
        if hit is not None:
            matches.append(Match(q, hit, "exact", 1.0))
            continue
        grams, system, mh = _signature(row, cfg)
        candidates = [(jaccard(grams, signatures[k][0]), -k) for k in lsh.query(mh) if signatures[k][1] == system]
        if candidates:
            similarity, neg_k = max(candidates)
            if similarity >= cfg.threshold:
                matches.append(Match(q, -neg_k, "near", round(similarity, 4)))
    return matches
