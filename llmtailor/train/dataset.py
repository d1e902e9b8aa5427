"""Turn a dataset version's chat rows into token ids with a loss mask, through the one renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtailor.chat import tokenize_for_training
from llmtailor.io import read_jsonl


def load_rows(path: Path) -> list[dict]:
    """Rows of a prepared split (train.jsonl / eval.jsonl)."""
    return [row for _, row in read_jsonl(path)]


def tokenize_rows(rows: list[dict], tokenizer: Any, max_len: int, assistant_only: bool = True) -> list[dict]:
    """input_ids + completion_mask per row, cut to max_len (prepared data already respects it)."""
    out = []
    for row in rows:
        enc = tokenize_for_training(tokenizer, row["messages"], assistant_only=assistant_only)
        out.append({k: v[:max_len] for k, v in enc.items()})
    return out


def build_dataset(rows: list[dict], tokenizer: Any, max_len: int, assistant_only: bool = True) -> Any:
    """A `datasets.Dataset` that TRL's SFTTrainer takes as already tokenized (it only builds labels)."""
    from datasets import Dataset

    return Dataset.from_list(tokenize_rows(rows, tokenizer, max_len, assistant_only))


def count_tokens(dataset: Any) -> int:
    """Tokens the model reads per epoch (padding excluded)."""
    return int(sum(len(ids) for ids in dataset["input_ids"]))
