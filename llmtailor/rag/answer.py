"""Answers with citations: retrieve, number the passages, render through the training prompt renderer, generate.

`RagAssistant.ask` is the one function both `tailor rag ask` and the server call; the evaluation ladder uses its
two halves (`retrieve`, then `finish` on the batched generations) so it scores the same prompts. When the best
passage scores under `answer.min_score` the model is not asked at all: the assistant says it does
not know instead of guessing from unrelated text.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.chat import render_prompt
from llmtailor.errors import TailorError
from llmtailor.rag.acl import Caller
from llmtailor.rag.config import AnswerConfig, RagConfig
from llmtailor.rag.search import Retriever
from llmtailor.rag.store import Hit

_CITE = re.compile(r"\[(\d{1,3})\]")


@dataclass
class Citation:
    """A numbered passage: where it comes from and how well it matched."""

    number: int
    source: str
    title: str
    page: int | None
    heading_path: str
    chunk_id: str
    score: float
    similarity: float | None

    def label(self) -> str:
        """`file, p. 3, Policy > Refunds` for people."""
        parts = [Path(self.source).name if "/" in self.source or "\\" in self.source else self.source]
        if self.page:
            parts.append(f"p. {self.page}")
        if self.heading_path:
            parts.append(self.heading_path)
        return ", ".join(parts)


@dataclass
class Answer:
    """The answer text, whether the index knew, the cited passages and the prompt that produced it."""

    question: str
    answer: str
    known: bool
    citations: list[Citation] = field(default_factory=list)
    passages: list[Citation] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)
    best_score: float | None = None
    prompt: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings_ms"] = {k: round(v, 1) for k, v in d.pop("timings").items()}
        return d


@dataclass
class Retrieved:
    """What `ask` has before the model call; `messages` is None when nothing relevant was found."""

    question: str
    hits: list[Hit]
    passages: list[Citation]
    best_score: float | None
    messages: list[dict[str, str]] | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        """Whether the model is asked at all (the best passage reached `answer.min_score`)."""
        return self.messages is not None


def passage_header(n: int, hit: Hit) -> str:
    c = hit.chunk
    name = Path(c.source).name if "/" in c.source else c.source
    bits = [f"source: {name}"]
    if c.page:
        bits.append(f"page {c.page}")
    if c.heading_path:
        bits.append(f"section: {c.heading_path}")
    return f"[{n}] ({', '.join(bits)})"


def build_messages(question: str, hits: list[Hit], system_prompt: str) -> list[dict[str, str]]:
    """System instructions + one user turn holding the numbered passages and the question."""
    blocks = [f"{passage_header(i, h)}\n{h.chunk.text.strip()}" for i, h in enumerate(hits, start=1)]
    user = "Context passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def cited_numbers(text: str) -> list[int]:
    """Citation numbers in order of first appearance."""
    seen: list[int] = []
    for m in _CITE.finditer(text):
        n = int(m.group(1))
        if n not in seen:
            seen.append(n)
    return seen


def relevance(hit: Hit) -> float | None:
    """The score compared with min_score: the cross-encoder's when one ran, else dense cosine similarity."""
    if hit.rerank is not None:
        return hit.rerank
    return hit.dense


def _citation(n: int, h: Hit) -> Citation:
    c = h.chunk
    return Citation(n, c.source, c.title, c.page or None, c.heading_path, c.id, float(h.score),
                    None if h.dense is None else float(h.dense))


class RagAssistant:
    """A retriever plus a generator; load once, ask many times (the server keeps one)."""

    def __init__(self, retriever: Retriever, cfg: AnswerConfig, *, model: Any = None, tokenizer: Any = None,
                 loader: Any = None, search_cfg_rewrite_n: int = 3):
        self.retriever = retriever
        self.cfg = cfg
        self._model = model
        self._tokenizer = tokenizer
        self._loader = loader  # () -> (model, tokenizer), called on first generation
        self.rewrite_n = search_cfg_rewrite_n
        if retriever.rewriter is None:  # multi-query rewriting uses this model (only when switched on)
            retriever.rewriter = self.rewrite

    @classmethod
    def load(cls, config: Path | None = None, *, index: Path | None = None, adapter: Path | None = None,
             rag: RagConfig | None = None) -> RagAssistant:
        """From tailor.yaml (model + rag sections); the model loads lazily on the first answer that needs it."""
        base_dir = None
        model_cfg = None
        if config is not None:
            from llmtailor.config import load_config

            tcfg = load_config(config)
            rag = rag or getattr(tcfg, "rag", None)
            model_cfg = tcfg.model
            base_dir = tcfg.base_dir
        rag = rag or RagConfig()
        if model_cfg is None:
            from llmtailor.config import ModelConfig

            model_cfg = ModelConfig()
        folder = index if index is not None else (
            rag.index_dir if rag.index_dir.is_absolute() or base_dir is None else base_dir / rag.index_dir
        )
        retriever = Retriever.open(folder, rag, base_dir=base_dir)

        def loader() -> tuple[Any, Any]:
            from llmtailor.models import load_model

            return load_model(model_cfg, adapter=adapter)

        return cls(retriever, rag.answer, loader=loader, search_cfg_rewrite_n=rag.search.rewrite_queries)

    def close(self) -> None:
        self.retriever.close()

    def _generator(self) -> tuple[Any, Any]:
        if self._model is None:
            if self._loader is None:
                raise TailorError("no model to generate with")
            self._model, self._tokenizer = self._loader()
        return self._model, self._tokenizer

    def _generate(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        from llmtailor.generate import generate

        model, tok = self._generator()
        return generate(model, tok, [messages], max_new_tokens=max_new_tokens)[0]

    def rewrite(self, question: str) -> list[str]:
        """Alternative search queries from the LLM (multi-query retrieval), one per line."""
        messages = [
            {"role": "system", "content": "You rewrite questions into search queries."},
            {"role": "user", "content": f"Write {self.rewrite_n} different short search queries for this question, "
                                        f"one per line, nothing else.\nQuestion: {question}"},
        ]
        text = self._generate(messages, 64)
        out = []
        for line in text.splitlines():
            line = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip().strip('"')
            if line and line not in out:
                out.append(line)
        return out[: self.rewrite_n]

    def retrieve(self, question: str, *, caller: Caller | None = None, where: str | None = None,
                 mode: str | None = None, top_k: int | None = None) -> Retrieved:
        """`ask` up to the model call: the passages `caller` may see and the prompt, or no prompt when nothing
        relevant was found (the evaluation ladder batches the generation itself, so it stops here)."""
        t0 = time.perf_counter()
        k = top_k or self.cfg.max_context_chunks
        result = self.retriever.search(question, caller=caller, where=where, mode=mode, top_k=k,
                                       with_similarity=True)
        timings = {"retrieve_ms": (time.perf_counter() - t0) * 1000}
        hits = result.hits[: self.cfg.max_context_chunks]
        scores = [s for s in (relevance(h) for h in hits) if s is not None]
        best = max(scores) if scores else None
        passages = [_citation(i, h) for i, h in enumerate(hits, start=1)]
        known = bool(hits) and best is not None and best >= self.cfg.min_score
        messages = build_messages(question, hits, self.cfg.system_prompt) if known else None
        return Retrieved(question, hits, passages, best, messages, timings)

    def finish(self, found: Retrieved, text: str | None, prompt: str | None = None) -> Answer:
        """The Answer for generated `text` (None: not asked, the configured "I don't know")."""
        return to_answer(found, text, self.cfg.no_answer, prompt)

    def ask(self, question: str, *, caller: Caller | None = None, where: str | None = None, mode: str | None = None,
            top_k: int | None = None) -> Answer:
        """Retrieve what `caller` may see, answer from it with [n] citations, or say it does not know."""
        t0 = time.perf_counter()
        found = self.retrieve(question, caller=caller, where=where, mode=mode, top_k=top_k)
        if found.messages is None:
            found.timings["total_ms"] = (time.perf_counter() - t0) * 1000
            return self.finish(found, None)
        t1 = time.perf_counter()
        model, tok = self._generator()
        prompt = render_prompt(tok, found.messages)
        text = self._generate(found.messages, self.cfg.max_new_tokens)
        found.timings["generate_ms"] = (time.perf_counter() - t1) * 1000
        found.timings["total_ms"] = (time.perf_counter() - t0) * 1000
        return self.finish(found, text, prompt)


def to_answer(found: Retrieved, text: str | None, no_answer: str, prompt: str | None = None) -> Answer:
    """Map the [n] markers of `text` to the numbered passages; those matching no passage are kept as invalid."""
    if text is None:
        return Answer(found.question, no_answer, False, [], found.passages, [], found.best_score, None, found.timings)
    numbers = cited_numbers(text)
    cited = [found.passages[n - 1] for n in numbers if 1 <= n <= len(found.passages)]
    invalid = [n for n in numbers if not 1 <= n <= len(found.passages)]
    return Answer(found.question, text, True, cited, found.passages, invalid, found.best_score, prompt, found.timings)


def ask(question: str, index: str | Path, *, config: Path | None = None, caller: Caller | None = None,
        where: str | None = None, adapter: Path | None = None) -> Answer:
    """One-shot convenience: load, answer, close (a server should keep a RagAssistant instead)."""
    assistant = RagAssistant.load(config, index=Path(index), adapter=adapter)
    try:
        return assistant.ask(question, caller=caller, where=where)
    finally:
        assistant.close()
