"""BM25 as sparse vectors, for stores without built-in full-text search (Qdrant).

Documents get the BM25 term-frequency part, tf·(k1+1) / (tf + k1·(1 − b + b·len/avg_len)); the store
multiplies by IDF at query time (Qdrant `Modifier.IDF`), and a query is its distinct terms with weight 1.
Terms are lower-cased, English stop words dropped and Snowball-stemmed, like LanceDB's FTS.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# The English stop-word list most BM25 tools share (Lucene / bm25s style).
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with i me my we our you your he him his she her its them what which who whom am were been "
    "being have has had having do does did doing would should could ought from up down out off over under again "
    "further once here when where why how all any both each few more most other some own same so than too very "
    "can just".split()
)


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """Normalised terms of a text (lower-case, no stop words, stemmed)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) < 40]
    return _stemmer().stemWords(words) if words else []


def term_id(term: str) -> int:
    """Stable 31-bit id of a term (sparse vector index)."""
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


def doc_vector(text: str, k1: float = 1.2, b: float = 0.75, avg_len: float = 80.0) -> tuple[list[int], list[float]]:
    """Sparse BM25 document vector (indices sorted)."""
    ts = terms(text)
    if not ts:
        return [], []
    counts: dict[int, int] = {}
    for t in ts:
        i = term_id(t)
        counts[i] = counts.get(i, 0) + 1
    norm = k1 * (1 - b + b * len(ts) / avg_len)
    idx = sorted(counts)
    return idx, [counts[i] * (k1 + 1) / (counts[i] + norm) for i in idx]


def query_vector(text: str) -> tuple[list[int], list[float]]:
    """Sparse query vector: each distinct term once, weight 1 (IDF comes from the store)."""
    idx = sorted({term_id(t) for t in terms(text)})
    return idx, [1.0] * len(idx)
