"""Retrieval settings: the `rag:` section of tailor.yaml.

Every field has a default that works on a laptop with no network; the defaults are also what
`tailor rag ...` uses when no config file is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PACKAGED_EMBEDDER = "all-minilm-l6-v2"
HASHING_EMBEDDER = "hashing"


class ChunkingConfig(BaseModel):
    """How documents are cut into passages (token counts use the embedding model's tokenizer)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(
        200,
        ge=16,
        le=8192,
        description="Token budget per chunk body; MiniLM reads at most 256 tokens, the heading path uses the rest.",
    )
    overlap_tokens: int = Field(
        32, ge=0, description="Tokens of the previous chunk repeated at the start of the next one (same section only)."
    )

    @model_validator(mode="after")
    def _check(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


class EmbeddingConfig(BaseModel):
    """Which model turns passages and queries into vectors."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        PACKAGED_EMBEDDER,
        description="'all-minilm-l6-v2' (packaged, offline), a local sentence-transformers folder, or 'hashing' "
        "(a lexical hashing-trick embedder for tests; no semantic power).",
    )
    batch_size: int = Field(64, ge=1, description="Passages embedded per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when present.")
    threads: int = Field(
        0, ge=0, description="CPU threads for embedding passages at ingest (0 = torch's default). Queries always "
        "use one thread: a single short text gains nothing from more, and they slow it down on a busy machine.",
    )


class StoreConfig(BaseModel):
    """Where chunks and vectors live."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["lancedb", "qdrant"] = Field(
        "lancedb", description="lancedb: embedded files in the index folder; qdrant: a Qdrant server (scale-out)."
    )
    url: str | None = Field(
        None, description="Qdrant server URL (e.g. http://qdrant:6333); unset = Qdrant local mode in the index folder."
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the Qdrant API key (never the key itself)."
    )
    collection: str = Field("llmtailor", description="Table (LanceDB) or collection (Qdrant) name.")
    ann_min_rows: int = Field(
        250_000,
        ge=0,
        description="LanceDB: below this many chunks, dense search is exact on an in-memory copy of the vectors "
        "(about dim x 4 bytes per chunk: 150 MB per 100k chunks at 384 dims); from this many on, an approximate "
        "IVF index is built and searched on disk.",
    )


class SearchConfig(BaseModel):
    """How a query is answered: dense, sparse (BM25) or both fused."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["dense", "sparse", "hybrid"] = Field("hybrid", description="Default retrieval mode.")
    top_k: int = Field(5, ge=1, le=1000, description="Results returned.")
    candidates: int = Field(50, ge=1, le=5000, description="Results fetched per side before fusion / MMR / reranking.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: score = weight / (rrf_k + rank).")
    dense_weight: float = Field(1.0, ge=0.0, description="RRF weight of the dense ranking.")
    sparse_weight: float = Field(1.0, ge=0.0, description="RRF weight of the BM25 ranking.")
    mmr: bool = Field(False, description="Re-order results with maximal marginal relevance for diversity.")
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0, description="MMR trade-off: 1 = relevance only, 0 = diversity only.")
    rewrite: bool = Field(False, description="Ask the LLM for alternative phrasings and fuse their results.")
    rewrite_queries: int = Field(3, ge=1, le=10, description="Alternative phrasings requested when rewrite is on.")
    reranker: str = Field(
        "fusion",
        description="'fusion' (keep the fused order) or the path of a local cross-encoder folder "
        "(sentence-transformers CrossEncoder format).",
    )

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if self.dense_weight == 0 and self.sparse_weight == 0:
            raise ValueError("dense_weight and sparse_weight cannot both be 0")
        return self


class AnswerConfig(BaseModel):
    """How `tailor rag ask` turns retrieved passages into a cited answer."""

    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(
        0.3,
        description="Below this relevance the assistant says it does not know. Compared with the best passage's "
        "dense cosine similarity (or the reranker score when a cross-encoder is set).",
    )
    max_context_chunks: int = Field(4, ge=1, le=50, description="Passages put into the prompt.")
    max_new_tokens: int = Field(256, ge=1, description="Generation budget for the answer.")
    system_prompt: str = Field(
        "Answer the question using only the numbered context passages. Cite every claim with the passage "
        "number in square brackets, like [1]. If the passages do not contain the answer, say you do not know.",
        description="System message of the RAG prompt.",
    )
    no_answer: str = Field(
        "I don't know: nothing relevant was found in the indexed documents.",
        description="Printed instead of generating when nothing relevant is retrieved.",
    )


class IngestConfig(BaseModel):
    """Limits for reading files."""

    model_config = ConfigDict(extra="forbid")

    max_file_mb: float = Field(25.0, gt=0, description="Files larger than this are skipped (reported), not read.")
    batch_files: int = Field(32, ge=1, description="Files written per atomic commit.")


class RagConfig(BaseModel):
    """Retrieval-augmented generation: ingest, index, search, answer."""

    model_config = ConfigDict(extra="forbid")

    index_dir: Path = Field(Path("rag-index"), description="Folder holding the index (relative to tailor.yaml).")
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
