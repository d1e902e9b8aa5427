"""Bootstrap confidence intervals and paired significance tests over held-out rows.

Both are seeded, so the same results give the same intervals on every machine. The paired test resamples row
indices once and applies them to both variants, so it compares the models on the same questions; that is what
makes a 40-row eval able to show a real difference at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of the mean; None when there is no value (never NaN)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return None
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    means = x[_indices(x.size, resamples, seed)].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bootstrap_ci_stat(
    n: int, stat: Callable[[np.ndarray], float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of a corpus-level statistic (BLEU, macro-F1) computed on resampled row indices."""
    if n == 0:
        return None
    stats = np.asarray([stat(idx) for idx in _indices(n, resamples, seed)], dtype=float)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None
    lo, hi = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def paired_bootstrap(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict | None:
    """Is mean(b) - mean(a) different from 0? Rows where either value is missing are left out.

    Returns {diff, ci, p_value, significant, n}: p is the two-sided bootstrap p-value (twice the share of
    resampled differences on the other side of 0, capped at 1), significant when p < alpha.
    """
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return None
    xa = np.asarray([p[0] for p in pairs], dtype=float)
    xb = np.asarray([p[1] for p in pairs], dtype=float)
    d = xb - xa
    diff = float(d.mean())
    if np.all(d == d[0]):
        p = 1.0 if d[0] == 0 else 0.0
        return {"diff": diff, "ci": [diff, diff], "p_value": p, "significant": p < alpha and d.size > 1,
                "n": int(d.size)}
    means = d[_indices(d.size, resamples, seed)].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    p = max(p, 1.0 / resamples)
    return {"diff": diff, "ci": [float(lo), float(hi)], "p_value": round(p, 6), "significant": p < alpha,
            "n": int(d.size)}


def paired_bootstrap_stat(
    n: int,
    stat_a: Callable[[np.ndarray], float],
    stat_b: Callable[[np.ndarray], float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict | None:
    """Paired test for a corpus-level statistic (same resampled rows for both variants)."""
    if n == 0:
        return None
    full = np.arange(n)
    diff = float(stat_b(full) - stat_a(full))
    diffs = np.asarray([stat_b(idx) - stat_a(idx) for idx in _indices(n, resamples, seed)], dtype=float)
    lo, hi = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    if np.all(diffs == 0):
        p = 1.0
    else:
        p = max(1.0 / resamples, min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean()))))
    return {"diff": diff, "ci": [float(lo), float(hi)], "p_value": round(p, 6), "significant": p < alpha, "n": n}
