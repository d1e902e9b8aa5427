"""Held-out loss and perplexity on assistant tokens: the same masking training uses."""

from __future__ import annotations

import math
from typing import Any

from llmtailor.chat import tokenize_for_training


def eval_loss(model: Any, tokenizer: Any, rows: list[dict], max_len: int, batch_size: int = 8) -> dict[str, float]:
    """Token-weighted mean cross-entropy over assistant tokens, and its perplexity."""
    import torch

    encoded = [tokenize_for_training(tokenizer, r["messages"]) for r in rows]
    encoded = [{k: v[:max_len] for k, v in e.items()} for e in encoded]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            att[i, :n] = 1
            mask = torch.tensor(e["completion_mask"], dtype=torch.bool)
            labels[i, :n] = torch.where(mask, torch.tensor(e["input_ids"]), torch.tensor(-100))
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
        shift_labels = labels[:, 1:].reshape(-1).to(device)
        loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
        total_loss += float(loss)
        total_tokens += int((shift_labels != -100).sum())
    if total_tokens == 0:
        return {"eval_loss": float("nan"), "perplexity": float("nan"), "eval_tokens": 0}
    mean = total_loss / total_tokens
    return {"eval_loss": round(mean, 5), "perplexity": round(math.exp(min(mean, 50.0)), 4), "eval_tokens": total_tokens}
