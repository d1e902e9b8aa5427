"""`tailor data raft`: retrieval-augmented fine-tuning rows from the chunks of an index the user already built.

A model that retrieves the right passage can still fail to *use* it (answer "1" to a question whose answer,
"within 14 days", sits in passage [1]). RAFT (Zhang et al., 2024) teaches it: each row shows k numbered passages,
the one holding the answer (the oracle) at a random position among distractors, and the answer is the oracle's
sentence with its citation marker ("... within 14 days [1]."); a share of rows has the oracle removed and is
answered with the RAG answerer's own decline sentence. The prompt is built by `rag.answer.build_messages`, the
function `tailor rag ask` and the server use, so training and serving prompts cannot disagree.

Access control: a row's passages all come from one tenant, and a distractor is used only when every caller who
may read the oracle may also read it (same tenant, level <= the oracle's, groups open or covering the oracle's),
so no row shows a reader text they could not retrieve. Documents, not rows, are split into train and held-out:
held-out questions come only from documents no training row shows.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmtailor.data.generator import GeneratorConfig, GeneratorError
from llmtailor.data.raft_rules import RuleQuestion, rule_questions
from llmtailor.errors import TailorError


class RaftConfig(BaseModel):
    """Retrieval-augmented fine-tuning rows (`raft:` in tailor.yaml) for `tailor data raft`."""

    model_config = ConfigDict(extra="forbid")

    index: Path | None = Field(None, description="Index folder to read chunks from; default: rag.index_dir.")
    output: Path = Field(Path("data/raft.jsonl"), description="Training rows (chat JSONL, origin synthetic).")
    heldout_output: Path = Field(
        Path("data/raft_heldout.jsonl"), description="Rows from held-out documents, never to be trained on."
    )
    heldout_fraction: float = Field(0.2, ge=0.0, le=0.9, description="Share of documents held out (not rows).")
    heldout_documents: list[str] = Field(
        default_factory=list, description="Documents always held out: sources, or file names they end with."
    )
    passages: int | None = Field(
        None, ge=1, le=50, description="Passages per row; default: rag.answer.max_context_chunks (what serving shows)."
    )
    unanswerable_share: float = Field(
        0.2, ge=0.0, le=0.9, description="Share of rows whose oracle passage is removed, answered with the decline."
    )
    questions_per_chunk: int = Field(3, ge=1, le=20, description="Questions asked about one passage at most.")
    rows_per_question: int = Field(
        1, ge=1, le=10, description="Rows per question, each with its own distractors and oracle position."
    )
    distractors: Literal["similar", "random"] = Field(
        "similar", description="similar: drawn from the passages nearest the oracle (what retrieval returns); "
        "random: any readable passage."
    )
    questions: Literal["auto", "rules", "generator"] = Field(
        "auto", description="auto: the generator when raft.generator (or a synth.generator model) is set, else "
        "rules over headings and fact sentences."
    )
    generator: GeneratorConfig | None = Field(None, description="Model that writes questions; unset: see questions.")
    max_new_tokens: int = Field(96, ge=16, description="Token budget of one generated question and answer.")
    seed: int = Field(0, description="Seed of the split-independent choices: distractors, positions, declines.")


@dataclass
class Question:
    """A question about one chunk: its answer sentence, the fact span a correct answer holds, how it was made."""

    chunk_id: str
    question: str
    answer: str
    fact: str
    kind: str


@dataclass
class RaftResult:
    """What was written: rows per split and kind, documents per split, and what was skipped and why."""

    output: Path
    heldout_output: Path
    documents: dict[str, int]
    rows: dict[str, int]
    questions: dict[str, int]
    skipped: Counter[str] = field(default_factory=Counter)
    tenants: list[str] = field(default_factory=list)
    questions_from: str = "rules"

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "heldout_output": str(self.heldout_output), "documents": self.documents,
                "rows": self.rows, "questions": self.questions, "skipped": dict(self.skipped),
                "tenants": self.tenants, "questions_from": self.questions_from}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w%€$£.,:]+", " ", text.lower()).split())


def contains_fact(text: str, fact: str) -> bool:
    """Whether `text` holds the fact span (case, spacing and punctuation around words ignored)."""
    f = _norm(fact).strip(" .,:")
    return bool(f) and f in _norm(text)


def readable_by_all_readers(oracle: Any, other: Any) -> bool:
    """Every caller allowed to read `oracle` may read `other` too (acl.can_see for each of them)."""
    if other.tenant != oracle.tenant or other.access_level > oracle.access_level:
        return False
    if not other.groups:
        return True
    # A reader of the oracle holds at least one of its groups (any one, when it has groups; none, when open).
    return bool(oracle.groups) and set(oracle.groups) <= set(other.groups)


def doc_key(chunk: Any) -> tuple[str, str]:
    """A document: one source within one tenant."""
    return chunk.tenant, chunk.source


def split_documents(docs: list[tuple[str, str]], fraction: float, seed: int,
                    pinned: list[str] = ()) -> set[tuple[str, str]]:
    """The held-out documents: `pinned` ones plus a seeded, order-independent `fraction` of the rest (at least one,
    never all, when the fraction is above 0 and there are two or more documents)."""
    from llmtailor.io import stable_hash

    def is_pinned(source: str) -> bool:
        return any(source == p or source.endswith("/" + p.lstrip("/")) or Path(source).name == p for p in pinned)

    held = {d for d in docs if is_pinned(d[1])}
    rest = sorted((d for d in docs if d not in held), key=lambda d: stable_hash([seed, d[0], d[1]]))
    want = round(fraction * len(docs)) - len(held)
    if fraction > 0 and len(docs) >= 2:
        want = max(want, 0 if held else 1)
    want = max(0, min(want, len(rest) - 1 if rest else 0))
    return held | set(rest[:want])


def read_chunks(index_dir: Path, rag: Any, base_dir: Path | None = None) -> list[Any]:
    """Every chunk of an index (text and access metadata), without loading its embedding model."""
    from llmtailor.rag.index import Index, _RecordedEmbedder

    info = Index.read_info(index_dir)
    if info is None:
        raise TailorError(f"{index_dir}: index not found; build it with `tailor rag ingest PATH --index {index_dir}`")
    emb = info.get("embedding") or {}
    recorded = _RecordedEmbedder(emb.get("model", "?"), emb.get("fingerprint", "?"), int(emb.get("dim", 1)))
    index = Index.open(index_dir, rag, base_dir=base_dir, embedder=recorded)  # type: ignore[arg-type]
    try:
        chunks = index.store.fetch(None)
        if chunks:
            vectors = index.store.vectors([c.id for c in chunks])
            for c in chunks:
                c.vector = vectors.get(c.id)
    finally:
        index.close()
    if not chunks:
        raise TailorError(f"{index_dir}: the index has no chunks; ingest documents with `tailor rag ingest`")
    return sorted(chunks, key=lambda c: (c.tenant, c.source, c.chunk_index, c.id))


def questions_by_rules(chunks: list[Any], per_chunk: int) -> list[Question]:
    """Rule questions for every chunk, each answer sentence asked once per document (chunk overlap repeats them)."""
    out: list[Question] = []
    seen: set[tuple[str, str, str]] = set()
    for c in chunks:
        for q in rule_questions(c.text, c.heading_path, per_chunk):
            key = (c.tenant, c.source, _norm(q.question))
            if key not in seen:
                seen.add(key)
                out.append(_from_rule(c.id, q))
    return out


def _from_rule(chunk_id: str, q: RuleQuestion) -> Question:
    return Question(chunk_id, q.question, q.answer, q.fact, q.kind)


_QA = re.compile(r"question:\s*(?P<q>.+?)\s*\n\s*answer:\s*(?P<a>.+)", re.I | re.S)


def generator_prompt(passage: str) -> list[dict[str, str]]:
    """The instruction a generator model answers for one passage."""
    return [
        {"role": "system", "content": "You write exam questions about a passage."},
        {"role": "user", "content": "Write one question that this passage answers, then the answer copied from the "
                                    "passage. Reply exactly as:\nQuestion: ...\nAnswer: ...\n\nPassage:\n" + passage},
    ]


def parse_generated(text: str, passage: str) -> tuple[Question | None, str]:
    """(question, "") or (None, drop reason): the answer must be a span the passage supports."""
    m = _QA.search(text)
    if not m:
        return None, "unparsed"
    question = m.group("q").strip().splitlines()[0].strip()
    answer = m.group("a").strip().splitlines()[0].strip().rstrip(".").strip()
    if not question.endswith("?") or len(question.split()) < 3:
        return None, "not_a_question"
    if not answer:
        return None, "empty_answer"
    words = _norm(answer).split()
    if sum(w in _norm(passage).split() for w in words) < 0.8 * len(words):
        return None, "unsupported_answer"
    return Question("", question, answer, answer, "generator"), ""


def questions_by_generator(chunks: list[Any], rc: RaftConfig, generator: Any, journal_path: Path,
                           skipped: Counter[str]) -> list[Question]:
    """One generated question per chunk, kept in a resumable journal: a rerun asks only about chunks not done."""
    from llmtailor.data.journal import Journal

    journal = Journal(journal_path, "chunk")
    with journal:
        for c in chunks:
            if c.id in journal.done:
                continue
            try:
                text = generator.chat(generator_prompt(c.text), temperature=0.0, max_tokens=rc.max_new_tokens)
            except GeneratorError as e:
                skipped[f"generator_{e.kind}"] += 1
                journal.failed(c.id, e, limit=3, setting="raft.generator", noun="questions",
                               command="tailor data raft")
                continue
            q, reason = parse_generated(text, c.text)
            if q is None:
                journal.drop(c.id, reason, text=text[:300])
            else:
                journal.keep(c.id, {"question": q.question, "answer": q.answer, "fact": q.fact})
    ids = {c.id for c in chunks}
    return [Question(r["_chunk"], r["question"], r["answer"], r["fact"], "generator")
            for r in journal.rows if r.get("_chunk") in ids]


def _similar_first(oracle: Any, pool: list[Any], rng: random.Random, want: int) -> list[Any]:
    """`want` distractors from the 3 x want passages nearest the oracle (stored vectors), in random order."""
    import numpy as np

    if oracle.vector is None or any(p.vector is None for p in pool):
        return rng.sample(pool, min(want, len(pool)))
    sims = np.stack([p.vector for p in pool]) @ oracle.vector if pool else np.zeros(0)
    near = [pool[i] for i in np.argsort(-sims, kind="stable")[: max(want, 3 * want)]]
    return rng.sample(near, min(want, len(near)))


def _random_pick(oracle: Any, pool: list[Any], rng: random.Random, want: int) -> list[Any]:
    return rng.sample(pool, min(want, len(pool)))


def build_rows(questions: list[Question], chunks: list[Any], rc: RaftConfig, answer_cfg: Any, k: int,
               split: str, skipped: Counter[str]) -> list[dict[str, Any]]:
    """Chat rows in the serving prompt format, for the questions of one split (passages from that split only)."""
    from llmtailor.rag.answer import build_messages
    from llmtailor.rag.store import Hit

    by_id = {c.id: c for c in chunks}
    by_tenant: dict[str, list[Any]] = {}
    for c in chunks:  # a row never crosses tenants: only the oracle's tenant is scanned
        by_tenant.setdefault(c.tenant, []).append(c)
    normed = {c.id: _norm(c.text) for c in chunks}  # contains_fact's normal form, computed once per chunk
    pick = _similar_first if rc.distractors == "similar" else _random_pick
    rows: list[dict[str, Any]] = []
    for q in questions:
        oracle = by_id[q.chunk_id]
        rng = random.Random(f"{rc.seed}:{oracle.id}:{q.question}")
        fact = _norm(q.fact).strip(" .,:")
        readable = [c for c in by_tenant[oracle.tenant] if c.id != oracle.id and readable_by_all_readers(oracle, c)
                    and not (fact and fact in normed[c.id])]
        for n in range(rc.rows_per_question):
            answerable = rng.random() >= rc.unanswerable_share
            pool = readable if answerable else [c for c in readable if c.source != oracle.source]
            if not pool and not answerable:
                skipped["no_distractor_for_decline"] += 1
                answerable, pool = True, readable
            passages = pick(oracle, pool, rng, k - 1 if answerable else k)
            if answerable:
                passages.insert(rng.randrange(len(passages) + 1), oracle)
                position = passages.index(oracle) + 1
                reply = f"{q.answer.rstrip('.!? ')} [{position}]."
            else:
                position, reply = None, answer_cfg.no_answer
            messages = build_messages(q.question, [Hit(c, 0.0) for c in passages], answer_cfg.system_prompt)
            rows.append({
                "messages": [*messages, {"role": "assistant", "content": reply}],
                "origin": "synthetic",
                "raft": {"split": split, "answerable": answerable, "question": q.question, "answer": q.answer,
                         "fact": q.fact, "kind": q.kind, "oracle": oracle.id, "source": oracle.source,
                         "position": position, "passages": [c.id for c in passages], "tenant": oracle.tenant,
                         "access_level": oracle.access_level, "groups": list(oracle.groups), "n": n},
            })
    return rows


def _generator_configured(cfg: Any, rc: RaftConfig) -> GeneratorConfig | None:
    if rc.questions == "rules":
        return None
    gen = rc.generator
    if gen is None and cfg.synth is not None and cfg.synth.generator.model_fields_set:
        gen = cfg.synth.generator
    if gen is None and rc.questions == "generator":
        raise TailorError(f"{cfg.path or 'tailor.yaml'}: raft.questions is 'generator' but neither raft.generator "
                          "nor synth.generator names a model; set one, or use questions: rules")
    return gen


def run_raft(cfg: Any, *, index: Path | None = None, output: Path | None = None, heldout: Path | None = None,
             generator: Any = None) -> RaftResult:
    """Read the index, ask questions about its chunks, split by document and write train and held-out rows."""
    from llmtailor.io import write_json, write_jsonl
    from llmtailor.rag.config import RagConfig

    rc: RaftConfig = getattr(cfg, "raft", None) or RaftConfig()
    rag = cfg.rag or RagConfig()
    base = cfg.base_dir

    def resolve(p: Path) -> Path:
        return p if p.is_absolute() or base is None else base / p

    index_dir = resolve(index or rc.index or rag.index_dir)
    out, held_out = resolve(output or rc.output), resolve(heldout or rc.heldout_output)
    if out.resolve() == held_out.resolve():
        raise TailorError(f"raft.output and raft.heldout_output are the same file ({out}); held-out rows must be "
                          "kept apart from training rows")
    k = rc.passages or rag.answer.max_context_chunks
    chunks = read_chunks(index_dir, rag, base)
    docs = sorted({doc_key(c) for c in chunks})
    unknown = [p for p in rc.heldout_documents if not any(s == p or s.endswith(p) for _, s in docs)]
    if unknown:
        raise TailorError(f"raft.heldout_documents: {', '.join(unknown)} is not a document of {index_dir}")
    skipped: Counter[str] = Counter()
    gen_cfg = _generator_configured(cfg, rc)
    if gen_cfg is not None or generator is not None:
        if generator is None:
            from llmtailor.data.generator import make_generator

            generator = make_generator(gen_cfg, cfg.model, resolve(cfg.runs_dir), seed=rc.seed)
        try:
            questions = questions_by_generator(chunks, rc, generator, out.with_name(out.name + ".questions.jsonl"),
                                               skipped)
        finally:
            if hasattr(generator, "close"):
                generator.close()
        source = "generator"
    else:
        questions = questions_by_rules(chunks, rc.questions_per_chunk)
        source = "rules"
    if not questions:
        raise TailorError(f"{index_dir}: no question could be made from its {len(chunks)} chunks ("
                          + ("the generator's answers were all dropped" if source == "generator" else
                             "no heading is a question and no sentence holds a number, date, amount or definition")
                          + "); configure raft.generator to write questions")
    held = split_documents(docs, rc.heldout_fraction, rc.seed, rc.heldout_documents)
    by_id = {c.id: c for c in chunks}
    result_rows: dict[str, list[dict[str, Any]]] = {}
    for split in ("train", "heldout"):
        part = [c for c in chunks if (doc_key(c) in held) == (split == "heldout")]
        qs = [q for q in questions if (doc_key(by_id[q.chunk_id]) in held) == (split == "heldout")]
        result_rows[split] = build_rows(qs, part, rc, rag.answer, k, split, skipped)
    write_jsonl(out, result_rows["train"])
    write_jsonl(held_out, result_rows["heldout"])

    def count(rows: list[dict[str, Any]], answerable: bool) -> int:
        return sum(r["raft"]["answerable"] == answerable for r in rows)

    result = RaftResult(
        out, held_out, {"train": len(docs) - len(held), "heldout": len(held)},
        {f"{s}_{kind}": count(result_rows[s], kind == "answerable") for s in ("train", "heldout")
         for kind in ("answerable", "unanswerable")},
        dict(Counter(q.kind for q in questions)), skipped, sorted({c.tenant for c in chunks}), source,
    )
    write_json(out.with_name(out.name + ".summary.json"),
               {**result.as_dict(), "index": str(index_dir), "passages": k, "config": rc.model_dump(mode="json"),
                "heldout_sources": sorted(s for _, s in held)})
    return result
