"""Catastrophic-forgetting check: a general-ability suite shipped with llmtailor, scored by fixed rules.

The suite (assets/eval/regression.jsonl, 220 items written for llmtailor) covers instruction following,
arithmetic, general knowledge and summarisation. Every item has a deterministic checker, so the same answers
always get the same score. Base and tuned answer the same items; the drop per category is base - tuned.
Perplexity on a short general English text (assets/eval/general_text.txt) is the second, generation-free signal.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmtailor.errors import RowError, TailorError
from llmtailor.eval.grounding import content_words
from llmtailor.eval.metrics import normalize_text, parse_json_output
from llmtailor.eval.suites import spread_across_categories
from llmtailor.io import read_jsonl

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "eval"
SUITE = ASSETS / "regression.jsonl"
GENERAL_TEXT = ASSETS / "general_text.txt"
CHECK_TYPES = {"number", "contains_any", "exact", "lowercase", "max_words", "min_words", "min_commas", "lines",
               "json_keys", "starts_with", "ends_with", "summary", "all"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORDS = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def load_suite(path: Path = SUITE, categories: Sequence[str] | None = None, max_items: int | None = None) -> list[dict]:
    """Items of the suite, optionally filtered and cut to max_items spread evenly over categories (round robin)."""
    items = []
    for line, row in read_jsonl(path):
        for key in ("id", "category", "prompt", "check"):
            if key not in row:
                raise RowError(path, line, key, "missing")
        if row["check"].get("type") not in CHECK_TYPES:
            raise RowError(path, line, "check.type", f"unknown checker {row['check'].get('type')!r}")
        items.append(row)
    if categories:
        unknown = set(categories) - {i["category"] for i in items}
        if unknown:
            raise TailorError(f"eval.regression.categories: unknown {sorted(unknown)}")
        items = [i for i in items if i["category"] in categories]
    return spread_across_categories(items, max_items or 0)


def _words(text: str) -> list[str]:
    return _WORDS.findall(text)


def check(answer: str, spec: dict) -> bool:
    """Does the answer satisfy the item's checker?"""
    text = (answer or "").strip()
    kind = spec["type"]
    if kind == "number":
        nums = _NUMBER.findall(text.replace(",", ""))
        return bool(nums) and math.isclose(float(nums[0]), float(spec["answer"]), abs_tol=1e-6)
    if kind == "contains_any":
        low = f" {normalize_text(text)} "
        return any(re.search(rf"(?<![\w]){re.escape(a.lower())}(?![\w])", low) for a in spec["answers"])
    if kind == "exact":
        if spec.get("case_sensitive"):
            return text.strip(" .!\"'") == spec["answer"]
        return normalize_text(text) == normalize_text(spec["answer"])
    if kind == "lowercase":
        return bool(text) and text == text.lower()
    if kind == "max_words":
        return 0 < len(_words(text)) <= spec["n"]
    if kind == "min_words":
        return len(_words(text)) >= spec["n"]
    if kind == "min_commas":
        return text.count(",") >= spec["n"]
    if kind == "lines":
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return len(lines) == spec["n"] and not any(re.match(r"\s*(\d+[.)]|[-*•])", ln) for ln in lines)
    if kind == "json_keys":
        obj, _ = parse_json_output(text)
        return isinstance(obj, dict) and all(k in obj for k in spec["keys"])
    if kind == "starts_with":
        return text.lower().startswith(spec["prefix"].lower())
    if kind == "ends_with":
        return text.lower().rstrip(" .!\"'").endswith(spec["suffix"].lower())
    if kind == "summary":
        words = content_words(text)
        hits = sum(any(any(w.startswith(k) or k.startswith(w) for w in words) for k in group)
                   for group in (list(map(str.lower, g)) for g in spec["keywords"]))
        return hits >= spec.get("min_groups", len(spec["keywords"])) and 0 < len(_words(text)) <= spec["max_words"]
    if kind == "all":
        return all(check(text, s) for s in spec["checks"])
    raise TailorError(f"unknown regression checker {kind!r}")


def _by_category(items: list[dict], passed: list[bool]) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for it, ok in zip(items, passed, strict=True):
        out.setdefault(it["category"], []).append(ok)
    return {c: sum(v) / len(v) for c, v in out.items()}


def run_regression(
    items: list[dict],
    generate_fn: Callable[[str, list[list[dict]]], list[str]],
    perplexity_fn: Callable[[str], float | None] | None = None,
) -> tuple[dict, list[dict]]:
    """Score base and tuned on the suite: (summary with per-category scores and drops, per-item rows)."""
    prompts = [[{"role": "user", "content": it["prompt"]}] for it in items]
    answers = {m: generate_fn(m, prompts) for m in ("base", "tuned")}
    passed = {m: [check(a, it["check"]) for a, it in zip(answers[m], items, strict=True)] for m in answers}
    cats = {m: _by_category(items, passed[m]) for m in passed}
    overall = {m: sum(passed[m]) / len(items) if items else None for m in passed}
    categories = {
        c: {"n": sum(it["category"] == c for it in items), "base": cats["base"][c], "tuned": cats["tuned"][c],
            "drop": cats["base"][c] - cats["tuned"][c]}
        for c in cats["base"]
    }
    summary: dict[str, Any] = {
        "status": "ok",
        "n_items": len(items),
        "base": overall["base"],
        "tuned": overall["tuned"],
        "drop": (overall["base"] - overall["tuned"]) if items else None,
        "categories": categories,
    }
    if perplexity_fn is not None:
        ppl = {m: perplexity_fn(m) for m in ("base", "tuned")}
        summary["perplexity"] = ppl
        if ppl["base"] and ppl["tuned"]:
            summary["perplexity_ratio"] = ppl["tuned"] / ppl["base"]
    gate_values = {"drop": summary["drop"], "base": summary["base"], "tuned": summary["tuned"],
                   "perplexity_ratio": summary.get("perplexity_ratio")}
    for c, v in categories.items():
        gate_values[f"{c}.drop"] = v["drop"]
        gate_values[f"{c}.base"] = v["base"]
        gate_values[f"{c}.tuned"] = v["tuned"]
    summary["gate_values"] = {k: v for k, v in gate_values.items() if v is not None}
    rows = [
        {"id": it["id"], "category": it["category"], "prompt": it["prompt"],
         "outputs": {m: answers[m][i] for m in answers}, "passed": {m: passed[m][i] for m in passed}}
        for i, it in enumerate(items)
    ]
    return summary, rows


def text_perplexity(model: Any, tokenizer: Any, text: str, window: int = 256) -> float | None:
    """Token perplexity of plain text in non-overlapping windows (no chat template: this is language modelling)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        return None
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(ids), window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            continue
        x = torch.tensor([chunk], device=device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        total += float(loss)
        count += len(chunk) - 1
    return round(math.exp(min(total / count, 50.0)), 4) if count else None


def general_text() -> str:
    return GENERAL_TEXT.read_text(encoding="utf-8")


def dump_suite_stats(path: Path = SUITE) -> dict[str, int]:
    """Items per category (for docs and tests)."""
    counts: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            cat = json.loads(line)["category"]
            counts[cat] = counts.get(cat, 0) + 1
    return counts
