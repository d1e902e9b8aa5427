"""The adaptation ladder: which variants to evaluate and the prompts each one sees.

Every variant answers the same held-out rows. They differ only in the weights (base: adapter switched off, tuned:
adapter on) and in the prompt: few-shot variants put k solved examples from the *train* split before the question,
RAG variants append the retrieved passages to the system prompt. Few-shot examples are picked deterministically
(seeded shuffle, then preferring examples whose answers differ) and never from the held-out rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.eval.config import parse_variant
from llmtailor.eval.labels import label_key

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig

RAG_HEADER = "Use these reference passages when they are relevant:"


@dataclass
class Variant:
    """One rung of the ladder."""

    name: str
    model: str  # "base" | "tuned"
    fewshot: bool
    rag: bool
    prompts: list[list[dict]] = field(default_factory=list)
    contexts: list[list[str]] | None = None  # retrieved passage texts per row (RAG variants)


def index_ready(cfg: TailorConfig) -> tuple[bool, str]:
    """Is a RAG index configured and built? (ok, reason when not)."""
    rag = getattr(cfg, "rag", None)
    if rag is None:
        return False, "no rag section in the config"
    folder = Path(rag.index_dir)
    if not folder.is_absolute():
        folder = cfg.base_dir / folder
    try:
        from llmtailor.rag.index import Index

        info = Index.read_info(folder)
    except Exception as e:  # noqa: BLE001 - any failure to read the index only skips the RAG rungs
        return False, f"index at {folder} unreadable ({e})"
    if info is None:
        return False, f"no index at {folder} (build it with `tailor rag ingest PATH`)"
    return True, str(folder)


def default_variants(cfg: TailorConfig) -> list[str]:
    """base, base_fewshot, tuned; plus base_rag and tuned_rag when a rag section is configured."""
    names = ["base", "base_fewshot", "tuned"]
    if getattr(cfg, "rag", None) is not None:
        names = ["base", "base_fewshot", "base_rag", "tuned", "tuned_rag"]
    return names


def pick_fewshot(train_rows: list[dict], k: int, seed: int) -> list[dict]:
    """k train rows: seeded shuffle, preferring distinct answers (so a label task sees several labels) and short
    rows (prompt length is what few-shot costs)."""
    usable = [r for r in train_rows if r.get("messages") and r["messages"][-1].get("role") == "assistant"]
    if not usable or k <= 0:
        return []
    order = list(range(len(usable)))
    random.Random(seed).shuffle(order)
    lengths = sorted(sum(len(m["content"]) for m in usable[i]["messages"]) for i in order)
    limit = lengths[len(lengths) // 2] if len(lengths) > 2 * k else lengths[-1]
    short = [i for i in order if sum(len(m["content"]) for m in usable[i]["messages"]) <= limit]
    picked: list[int] = []
    seen: set[str] = set()
    for pool in (short, order):  # distinct answers, short rows first, then any row
        for i in pool:
            key = label_key(usable[i]["messages"][-1]["content"])[:80]
            if len(picked) < k and key not in seen and i not in picked:
                picked.append(i)
                seen.add(key)
    for i in short + order:
        if len(picked) == k:
            break
        if i not in picked:
            picked.append(i)
    return [usable[i] for i in picked]


def fewshot_prompt(prompt: list[dict], shots: list[dict]) -> list[dict]:
    """System turn(s) first, then each shot as a user/assistant pair, then the question."""
    system = [m for m in prompt if m["role"] == "system"]
    rest = [m for m in prompt if m["role"] != "system"]
    pairs: list[dict] = []
    for shot in shots:
        msgs = [m for m in shot["messages"] if m["role"] != "system"]
        pairs.extend({"role": m["role"], "content": m["content"]} for m in msgs)
    return system + pairs + rest


def rag_prompt(prompt: list[dict], passages: list[str]) -> list[dict]:
    """The task's own system prompt plus numbered passages; the question stays the user turn."""
    block = "\n\n".join(f"[{i}] {p.strip()}" for i, p in enumerate(passages, start=1))
    system = [m for m in prompt if m["role"] == "system"]
    rest = [m for m in prompt if m["role"] != "system"]
    text = (system[0]["content"] + "\n\n" if system else "") + f"{RAG_HEADER}\n\n{block}"
    return [{"role": "system", "content": text}, *rest]


def retrieve_all(cfg: TailorConfig, questions: list[str], top_k: int) -> list[list[str]]:
    """Passages for each question through the RAG stage's retriever (public caller: no tenant, no groups)."""
    from llmtailor.rag.search import Retriever

    ok, where = index_ready(cfg)
    if not ok:
        raise RuntimeError(where)
    retriever = Retriever.open(where, cfg.rag, base_dir=cfg.base_dir)
    try:
        out = []
        for q in questions:
            if not q.strip():
                out.append([])
                continue
            result = retriever.search(q, top_k=top_k)
            out.append([h.chunk.text for h in result.hits[:top_k]])
        return out
    finally:
        retriever.close()


def build_variants(
    cfg: TailorConfig,
    names: list[str],
    prompts: list[list[dict]],
    train_rows: list[dict],
    questions: list[str],
    say: Any = print,
    retrieve: Any = None,
) -> tuple[list[Variant], dict[str, str], list[dict]]:
    """Variants ready to generate, the ones skipped with the reason, and the few-shot rows used."""
    variants: list[Variant] = []
    skipped: dict[str, str] = {}
    shots = pick_fewshot(train_rows, cfg.eval.fewshot_k, cfg.eval.seed) if any("fewshot" in n for n in names) else []
    contexts: list[list[str]] | None = None
    rag_problem: str | None = None
    if any("rag" in parse_variant(n)[1] for n in names):
        ok, where = index_ready(cfg)
        if not ok:
            rag_problem = where
        else:
            try:
                top_k = cfg.rag.answer.max_context_chunks
                contexts = (retrieve or retrieve_all)(cfg, questions, top_k)
            except Exception as e:  # noqa: BLE001 - retrieval trouble skips the RAG rungs, the rest still runs
                rag_problem = f"retrieval failed: {e}"
    for name in names:
        model, flags = parse_variant(name)
        if "fewshot" in flags and not shots:
            skipped[name] = "no train rows to draw few-shot examples from"
            say(f"[yellow]skipping {name}[/]: {skipped[name]}")
            continue
        if "rag" in flags and contexts is None:
            skipped[name] = f"RAG not available: {rag_problem}"
            say(f"[yellow]skipping {name}[/]: {skipped[name]}")
            continue
        v = Variant(name, model, "fewshot" in flags, "rag" in flags)
        for i, p in enumerate(prompts):
            q = fewshot_prompt(p, shots) if v.fewshot else list(p)
            if v.rag:
                q = rag_prompt(q, contexts[i])
            v.prompts.append(q)
        v.contexts = contexts if v.rag else None
        variants.append(v)
    return variants, skipped, shots
