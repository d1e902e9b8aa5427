"""Duplicate removal: exact (normalised text digest), then near-duplicates with MinHash LSH (rensa).

Duplicates make a small model memorise a few answers and leak between train and eval. The first
occurrence of each group is kept, so source order decides which copy survives.
"""

from __future__ import annotations

from collections.abc import Callable

from llmtailor.data.config import DedupConfig
from llmtailor.data.rows import Row, exact_key, system_text, words

MINHASH_SEED = 42


def exact_dedup(rows: list[Row]) -> tuple[list[Row], int]:
    """Rows whose normalised conversation was not seen before; returns (kept, dropped count)."""
    seen: set[str] = set()
    kept: list[Row] = []
    for row in rows:
        key = exact_key(row.messages)
        if key not in seen:
            seen.add(key)
            kept.append(row)
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


def near_dedup(
    rows: list[Row], cfg: DedupConfig, advance: Callable[[int], object] | None = None
) -> tuple[list[Row], int]:
    """Drop rows whose user/assistant word shingles have Jaccard >= threshold with an earlier kept row.

    System turns are left out of the shingles (a shared system prompt would make unrelated rows look alike)
    but must match exactly for two rows to count as duplicates.
    """
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, num_bands=_num_bands(cfg.num_perm))
    kept: list[Row] = []
    kept_sets: list[set[str]] = []
    kept_systems: list[str] = []
    for row in rows:
        grams = shingles(words(row.messages), cfg.ngram)
        system = system_text(row.messages)
        mh = RMinHash(num_perm=cfg.num_perm, seed=MINHASH_SEED)
        mh.update(sorted(grams))
        duplicate = any(
            kept_systems[key] == system and jaccard(grams, kept_sets[key]) >= cfg.threshold for key in lsh.query(mh)
        )
        if not duplicate:
            lsh.insert(len(kept), mh)
            kept.append(row)
            kept_sets.append(grams)
            kept_systems.append(system)
        if advance:
            advance(1)
    return kept, len(rows) - len(kept)
