"""Deterministic train/eval split: a row's side depends only on its content and the seed.

Ordering by a seeded content hash (not a random shuffle) means adding rows never moves existing
rows between train and eval beyond what the new size requires, and reruns are reproducible.
"""

from __future__ import annotations

import hashlib

from llmtailor.data.rows import Row
from llmtailor.io import stable_hash


def eval_size(n: int, fraction: float) -> int:
    """Rows held out: round(n * fraction), at least 1 and at most n - 1 when there are 2+ rows."""
    if n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def _key(row: Row, seed: int) -> str:
    content = stable_hash(row.to_json(), length=64)
    return hashlib.sha256(f"{seed}:{content}".encode()).hexdigest()


def split_rows(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, eval); each keeps the input order of its rows."""
    ranked = sorted(range(len(rows)), key=lambda i: (_key(rows[i], seed), i))
    held = set(ranked[: eval_size(len(rows), fraction)])
    train = [r for i, r in enumerate(rows) if i not in held]
    evals = [r for i, r in enumerate(rows) if i in held]
    return train, evals
