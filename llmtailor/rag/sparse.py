"""BM25: sparse vectors for stores without built-in full-text search (Qdrant), and an in-memory BM25 that ranks
like LanceDB's full-text index, for a long-lived process's snapshot of one table version (`MemoryBM25`).

Qdrant: documents get the BM25 term-frequency part, tf·(k1+1) / (tf + k1·(1 − b + b·len/avg_len)); the store
multiplies by IDF at query time (Qdrant `Modifier.IDF`), and a query is its distinct terms with weight 1. Terms
are lower-cased, English stop words dropped and Snowball-stemmed (`terms`).

LanceDB snapshot: `lance_terms` reproduces the FTS index's analyzer (probed against Lance, tested against a real
index), and `MemoryBM25` its scores, so the in-memory leg returns what Lance's full-text search returns.
"""

from __future__ import annotations

import re
import threading
import zlib

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# The English stop-word list most BM25 tools share (Lucene / bm25s style).
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with i me my we our you your he him his she her its them what which who whom am were been "
    "being have has had having do does did doing would should could ought from up down out off over under again "
    "further once here when where why how all any both each few more most other some own same so than too very "
    "can just".split()
)


_local = threading.local()


def _stemmer():
    """One Snowball stemmer per thread (PyStemmer objects keep state and are not safe to share across threads)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


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


# ---------------------------------------------------------------- LanceDB's FTS analyzer, and BM25 in memory

# NLTK's English stop list: what Lance's English `remove_stop_words` drops (probed against Lance 0.40: every one
# of these is dropped, and it is checked against the *stem*, so "because" -> "becaus" stays).
LANCE_STOPWORDS = frozenset(
    "a about above after again against ain all am an and any are aren as at be because been before being below "
    "between both but by can couldn d did didn do does doesn doing don down during each few for from further had "
    "hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it its itself "
    "just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or other our ours "
    "ourselves out over own re s same shan she should shouldn so some such t than that the their theirs them "
    "themselves then there these they this those through to too under until up ve very was wasn we were weren what "
    "when where which while who whom why will with won wouldn y you your yours yourself yourselves".split()
)
_MAX_TOKEN_BYTES = 40  # Lance's max_token_length: longer tokens are dropped


def _fold(term: str) -> str:
    """ASCII folding as Lance applies it (after stemming): accents dropped, ligatures split (NFKD)."""
    import unicodedata

    return "".join(ch for ch in unicodedata.normalize("NFKD", term) if not unicodedata.combining(ch))


def _lance_term(word: str) -> str | None:
    """The term a lower-cased word becomes in Lance's English FTS index, None when it is dropped."""
    if not word or len(word.encode("utf-8")) >= _MAX_TOKEN_BYTES:  # "": Arrow's split at a leading/trailing space
        return None
    stem = _stemmer().stemWord(word)
    if stem in LANCE_STOPWORDS:
        return None
    return stem if stem.isascii() else _fold(stem)


# ASCII bytes -> lower-case letters and digits kept, everything else a space (what `_WORD` does, 10x faster).
_ASCII_WORDS = bytes(ord(chr(c).lower()) if c < 128 and chr(c).isalnum() else 32 if c < 128 else c for c in range(256))


def _words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (`_WORD` on the lower-cased text; a byte table for ASCII text)."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).decode("ascii").split()
    return _WORD.findall(text.lower())


def lance_terms(text: str) -> list[str]:
    """Terms of a text as LanceDB's English FTS index makes them (simple tokenizer, lower case, tokens under 40
    bytes, Snowball stem, NLTK stop list on the stem, ASCII folding). The in-memory BM25 tokenises with exactly
    this, so that it ranks like the index."""
    return [t for t in map(_lance_term, _words(text)) if t is not None]


class _TermIds(dict):
    """Lower-cased word -> term id (-1: dropped), filled on first sight, so each distinct word is stemmed once."""

    def __init__(self, vocab: dict[str, int], grow: bool):
        super().__init__()
        self.vocab, self.grow = vocab, grow

    def __missing__(self, word: str) -> int:
        term = _lance_term(word)
        tid = -1 if term is None else self.vocab.get(term, -1)
        if term is not None and tid < 0 and self.grow:
            tid = self.vocab[term] = len(self.vocab)
        self[word] = tid
        return tid


class MemoryBM25:
    """BM25 over one table version in memory, scored as Lance's FTS scores it, filtered by a mask before top-k.

    Lance's full-text query with the access filter as prefilter took 10-20 ms at 100k chunks (most of a hybrid
    search); this one scores only the postings of the query's terms inside the caller's row block. Scores follow
    Lance (probed): idf = ln(1 + (N - df + 0.5) / (df + 0.5)) over the whole version, term part
    tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len)), k1 = 1.2, b = 0.75, summed over query tokens
    (a repeated query word counts twice). Postings are stored per term, sorted by row position.
    """

    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n = self.n = len(texts)
        self.vocab: dict[str, int] = {}
        # Words of every text, space-separated, split and dictionary-encoded by Arrow; each distinct word is then
        # stemmed once. A per-word Python loop took 10 s per 100k Cranfield-sized chunks, this about a quarter.
        spaced = pa.array([" ".join(_words(t)) if t and not t.isascii() else (t or "").encode("ascii")
                           .translate(_ASCII_WORDS).decode("ascii") for t in texts], type=pa.large_string())
        words = pc.ascii_split_whitespace(spaced)
        raw_len = pc.list_value_length(words).fill_null(0).to_numpy(zero_copy_only=False)
        encoded = pc.dictionary_encode(pc.list_flatten(words))
        ids = _TermIds(self.vocab, grow=True)
        lookup = np.asarray([ids[w] for w in encoded.dictionary.to_pylist()] or [-1], dtype=np.int32)
        tid = lookup[encoded.indices.to_numpy(zero_copy_only=False)] if len(encoded) else np.zeros(0, np.int32)
        doc = np.repeat(np.arange(n, dtype=np.int32), raw_len)
        keep = tid >= 0
        tid, doc = tid[keep], doc[keep]
        doc_len = np.bincount(doc, minlength=n).astype(np.float64)
        keys, tf = np.unique(tid.astype(np.int64) * max(n, 1) + doc, return_counts=True)  # by term, then row
        terms_of, self.docs = keys // max(n, 1), (keys % max(n, 1)).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(terms_of, minlength=len(self.vocab)))])
        df = np.diff(self.indptr).astype(np.float64)
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avg = doc_len.sum() / n if n else 1.0
        norm = k1 * (1.0 - b + b * doc_len[self.docs] / (avg or 1.0))
        self.weights = (tf * (k1 + 1.0) / (tf + norm)).astype(np.float32)

    def query_terms(self, text: str) -> dict[int, int]:
        """Term id -> how often it occurs in the query (terms the version does not hold are left out)."""
        ids = _TermIds(self.vocab, grow=False)
        counts: dict[int, int] = {}
        for word in _words(text):
            t = ids[word]
            if t >= 0:
                counts[t] = counts.get(t, 0) + 1
        return counts

    def top(self, text: str, k: int, lo: int, hi: int, allowed=None):
        """(positions, scores) of the best k rows in lo..hi that match a query term and, given `allowed` (a
        boolean mask over lo..hi), are allowed; best first, ties by position. The mask is applied before top-k."""
        import numpy as np

        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if k <= 0 or hi <= lo:
            return empty
        scores = np.zeros(hi - lo, dtype=np.float32)
        for t, count in self.query_terms(text).items():
            a, z = int(self.indptr[t]), int(self.indptr[t + 1])
            docs = self.docs[a:z]
            i, j = np.searchsorted(docs, [lo, hi])
            if j > i:  # a term's postings hold each row once, so `+=` on fancy indices is exact
                scores[docs[i:j] - lo] += self.weights[a + i : a + j] * np.float32(self.idf[t] * count)
        # Every matching row scores > 0 (idf > 0 and the term part > 0): no separate "matched" set is needed.
        hit = scores > 0
        if allowed is not None:
            hit &= allowed
        cand = np.flatnonzero(hit)
        if cand.size == 0:
            return empty
        scores = scores[cand]
        k = min(k, cand.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < cand.size else np.arange(cand.size)
        top = top[np.lexsort((cand[top], -scores[top]))]
        return cand[top] + lo, scores[top]
