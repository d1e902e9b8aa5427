"""Train/test leakage: eval rows that also occur, exactly or nearly, in the training rows.

A test row the model was trained on measures memory, not ability, so every eval row is checked against train
with dedup's own tests and settings (`data.dedup`), whether the eval split is the golden test set or a random
split. Leaked eval rows are reported (data card, eval results, report, gate `data.leakage`), never removed:
the test set is defined before training and stays fixed. `data.leakage: drop_from_train` drops the training
copies instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtailor.data.config import DataConfig
from llmtailor.data.dedup import Match, find_matches
from llmtailor.data.rows import Row

CARD_LEAKS = 50  # matched pairs listed in the card; the counts cover all of them
TEXT_CHARS = 200
NO_CHECK = (
    "the dataset card has no leakage check (prepared by an older llmtailor): rerun `tailor data prepare`, "
    "then `tailor eval`"
)


def _describe(row: Row) -> dict[str, Any]:
    """Where a row came from and the start of its user text, enough to find it again."""
    text = " / ".join(m["content"] for m in row.messages if m["role"] == "user")
    out: dict[str, Any] = {"source": row.source, "file": row.file, "line": row.line}
    if "id" in row.extra:
        out["id"] = row.extra["id"]
    out["text"] = text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"
    return out


def _section(train: list[Row], evals: list[Row], matches: list[Match], cfg: DataConfig) -> dict[str, Any]:
    exact = sum(m.kind == "exact" for m in matches)
    return {
        "policy": cfg.leakage,
        "settings": {"threshold": cfg.dedup.threshold, "num_perm": cfg.dedup.num_perm, "ngram": cfg.dedup.ngram},
        "eval_rows": len(evals),
        "count": len(matches),
        "exact": exact,
        "near": len(matches) - exact,
        "rate": round(len(matches) / len(evals), 4) if evals else 0.0,
        "rows": [
            {"kind": m.kind, "similarity": m.similarity, "test": _describe(evals[m.query]),
             "train": _describe(train[m.reference])}
            for m in matches[:CARD_LEAKS]
        ],
    }


def check_leakage(train: list[Row], evals: list[Row], cfg: DataConfig) -> tuple[list[Row], dict[str, Any]]:
    """(train rows to write, the card's `leakage` section). Eval rows are never changed.

    With `drop_from_train`, every train row that duplicates some eval row is dropped (looked up from the eval
    side, so several train copies of one test row all go) and the leakage left afterwards is what is reported.
    """
    dropped = 0
    if cfg.leakage == "drop_from_train" and train and evals:
        copies = {m.query for m in find_matches(evals, train, cfg.dedup)}
        train = [r for i, r in enumerate(train) if i not in copies]
        dropped = len(copies)
    matches = find_matches(train, evals, cfg.dedup) if train and evals else []
    return train, {**_section(train, evals, matches, cfg), "dropped_from_train": dropped}


def leakage_results(card: dict[str, Any] | None) -> dict[str, Any]:
    """The `data` section of eval/results.json: the card's leakage plus the values `data.*` gates read."""
    card = card if isinstance(card, dict) else {}
    leak = card.get("leakage")
    if not isinstance(leak, dict) or not isinstance(leak.get("count"), int):
        return {"status": "skipped", "reason": NO_CHECK}
    split = card["eval_split"] if isinstance(card.get("eval_split"), dict) else {}
    return {
        "status": "ok",
        "eval_source": split.get("source"),
        "eval_split": split,
        "leakage": leak,
        "gate_values": {
            "leakage": leak["count"],
            "leakage_rate": leak.get("rate", 0.0),
            "exact.leakage": leak.get("exact", 0),
            "near.leakage": leak.get("near", 0),
        },
    }


def dataset_leakage_results(dataset_dir: str | Path | None) -> dict[str, Any]:
    """leakage_results of the card in a dataset version folder (skipped, with the reason, when it has none)."""
    if not dataset_dir:
        return leakage_results(None)
    try:
        card = json.loads((Path(dataset_dir) / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        card = None
    return leakage_results(card)
