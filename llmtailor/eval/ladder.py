"""The adaptation ladder: which variants to evaluate and the prompts each one sees.

Every variant answers the same held-out rows. They differ only in the weights (base: adapter switched off, tuned:
adapter on) and in the prompt: few-shot variants put k solved examples from the *train* split before the question,
RAG variants ask exactly as `tailor rag ask` does (`RagAssistant.retrieve`: the answer system prompt, numbered
passages with their sources and the question in the user turn; "I don't know" without generating when the best
passage is under `rag.answer.min_score`). Few-shot examples are picked deterministically (seeded shuffle, then
preferring examples whose answers differ) and never from the held-out rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.eval.config import CONSTRAINED_SUFFIX, parse_variant
from llmtailor.eval.labels import label_key

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig
    from llmtailor.rag.answer import Retrieved


@dataclass
class Variant:
    """One rung of the ladder."""

    name: str
    model: str  # "base" | "tuned"
    fewshot: bool
    rag: bool
    prompts: list[list[dict]] = field(default_factory=list)
    retrieved: list[Retrieved] | None = None  # per row, RAG variants: passages, and no prompt when nothing relevant
    constrained: bool = False  # decoded under the JSON-schema grammar (eval.constrained_decoding)

    @property
    def contexts(self) -> list[list[str]] | None:
        """Retrieved passage texts per row (what grounding is scored against)."""
        return None if self.retrieved is None else [[h.chunk.text for h in r.hits] for r in self.retrieved]

    def asks(self, i: int) -> bool:
        """Whether row i goes to the model (a RAG row with nothing relevant gets `no_answer` instead)."""
        return self.retrieved is None or self.retrieved[i].known


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


def rag_prompt(prompt: list[dict], shots: list[dict], found: Retrieved, system_prompt: str) -> list[dict]:
    """`tailor rag ask`'s messages for the row's question; few-shot pairs and the row's earlier turns go between
    the system turn and the final user turn (which holds the passages)."""
    from llmtailor.rag.answer import build_messages

    messages = found.messages or build_messages(found.question, found.hits, system_prompt)
    history = [m for m in prompt if m["role"] != "system"][:-1]
    return [messages[0], *fewshot_prompt([], shots), *history, *messages[1:]]


def retrieve_all(cfg: TailorConfig, questions: list[str]) -> list[Retrieved]:
    """`RagAssistant.retrieve` for each question (the public caller: no tenant, no groups, level public)."""
    from llmtailor.rag.answer import RagAssistant, Retrieved
    from llmtailor.rag.search import Retriever

    ok, where = index_ready(cfg)
    if not ok:
        raise RuntimeError(where)

    def loader() -> tuple[Any, Any]:  # only used when rag.search.rewrite asks the model for extra queries
        from llmtailor.models import load_model

        return load_model(cfg.model)

    assistant = RagAssistant(Retriever.open(where, cfg.rag, base_dir=cfg.base_dir), cfg.rag.answer, loader=loader,
                             search_cfg_rewrite_n=cfg.rag.search.rewrite_queries)
    try:
        return [assistant.retrieve(q) if q.strip() else Retrieved(q, [], [], None, None) for q in questions]
    finally:
        assistant.close()


def build_variants(
    cfg: TailorConfig,
    names: list[str],
    prompts: list[list[dict]],
    train_rows: list[dict],
    questions: list[str],
    say: Any = print,
    retrieve: Any = None,
    constrained: list[str] | None = None,
) -> tuple[list[Variant], dict[str, str], list[dict]]:
    """Variants ready to generate, the ones skipped with the reason, and the few-shot rows used. Each name in
    `constrained` also gets a `<name>_constrained` twin right after it: same weights and prompts, so the two differ
    only in decoding."""
    variants: list[Variant] = []
    skipped: dict[str, str] = {}
    shots = pick_fewshot(train_rows, cfg.eval.fewshot_k, cfg.eval.seed) if any("fewshot" in n for n in names) else []
    found: list[Retrieved] | None = None
    rag_problem: str | None = None
    if any("rag" in parse_variant(n)[1] for n in names):
        found, rag_problem = _retrieve(cfg, questions, retrieve, say)
    for name in names:
        model, flags = parse_variant(name)
        if "fewshot" in flags and not shots:
            skipped[name] = "no train rows to draw few-shot examples from"
            say(f"[yellow]skipping {name}[/]: {skipped[name]}")
            continue
        if "rag" in flags and found is None:
            skipped[name] = f"RAG not available: {rag_problem}"
            say(f"[yellow]skipping {name}[/]: {skipped[name]}")
            continue
        v = Variant(name, model, "fewshot" in flags, "rag" in flags)
        for i, p in enumerate(prompts):
            if v.rag:
                v.prompts.append(rag_prompt(p, shots if v.fewshot else [], found[i], cfg.rag.answer.system_prompt))
            else:
                v.prompts.append(fewshot_prompt(p, shots) if v.fewshot else list(p))
        v.retrieved = found if v.rag else None
        variants.append(v)
        if name in (constrained or []):
            variants.append(replace(v, name=name + CONSTRAINED_SUFFIX, constrained=True))
    for name in constrained or []:
        if name not in names:
            skipped[name + CONSTRAINED_SUFFIX] = f"{name} is not in the ladder ({', '.join(names)})"
        elif name in skipped:
            skipped[name + CONSTRAINED_SUFFIX] = f"{name} was skipped: {skipped[name]}"
        else:
            continue
        say(f"[yellow]skipping {name + CONSTRAINED_SUFFIX}[/]: {skipped[name + CONSTRAINED_SUFFIX]}")
    return variants, skipped, shots


def _retrieve(cfg: TailorConfig, questions: list[str], retrieve: Any, say: Any) -> tuple[list | None, str | None]:
    """Retrieval for every row, or (None, why) so the RAG rungs are skipped and the rest still runs."""
    ok, where = index_ready(cfg)
    if not ok:
        return None, where
    try:
        found = (retrieve or retrieve_all)(cfg, questions)
    except Exception as e:  # noqa: BLE001 - retrieval trouble skips the RAG rungs, the rest still runs
        return None, f"retrieval failed: {e}"
    if not any(r.hits for r in found):
        say("[yellow]RAG: no passage retrieved for any held-out row[/] (documents ingested with --tenant, groups or "
            "an access level above public are invisible to the public caller the evaluation uses)")
    elif not any(r.known for r in found):
        say(f"[yellow]RAG: every row scored under rag.answer.min_score={cfg.rag.answer.min_score}[/]: "
            "all RAG answers are the configured no_answer")
    return found, None
