"""Rerankers: re-order fused candidates. Default: keep the fusion order. Optional: a local cross-encoder.

No cross-encoder ships with llmtailor (none can be packaged for offline use today); a user who has
one as a local sentence-transformers CrossEncoder folder points `search.reranker` at it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from llmtailor.errors import TailorError
from llmtailor.rag.store import Hit


@runtime_checkable
class Reranker(Protocol):
    """Re-score and re-order candidate hits for one query."""

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        ...


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a local cross-encoder; the top `max_candidates` are re-ordered."""

    def __init__(self, folder: str | Path, max_candidates: int = 50, batch_size: int = 32):
        self.folder = Path(folder)
        if not (self.folder / "config.json").exists():
            raise TailorError(
                f"search.reranker {str(folder)!r}: not a local cross-encoder folder (no config.json). "
                "Use 'fusion', or the path of a sentence-transformers CrossEncoder model folder."
            )
        self.max_candidates = max_candidates
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from sentence_transformers import CrossEncoder

            self._model = CrossEncoder(str(self.folder), local_files_only=True)
        return self._model

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        head, tail = hits[: self.max_candidates], hits[self.max_candidates :]
        if not head:
            return hits
        pairs = [(query, h.chunk.search_text or _passage(h)) for h in head]
        scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        for h, s in zip(head, scores, strict=True):
            h.rerank = float(s)
            h.score = float(s)
        head.sort(key=lambda h: -h.score)
        return head + tail


def _passage(hit: Hit) -> str:
    """What was embedded: title and heading path above the passage (stores may return hits without it)."""
    c = hit.chunk
    heads = [c.title] if c.title else []
    if c.heading_path and c.heading_path.split(" > ")[0] != c.title:
        heads.append(c.heading_path)
    elif c.heading_path:
        heads = [c.heading_path]
    header = " > ".join(heads)
    return f"{header}\n\n{c.text}" if header else c.text


def load_reranker(name: str, base_dir: Path | None = None) -> Reranker | None:
    """None for 'fusion' (the fused order stands), else a cross-encoder from a local folder."""
    if name in ("fusion", "", "none"):
        return None
    folder = Path(name).expanduser()
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    return CrossEncoderReranker(folder)
