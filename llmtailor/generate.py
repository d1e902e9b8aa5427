"""Batched greedy generation over chat conversations, shared by evaluation, RAG answers and chat.

Prompts go through `chat.render_prompt`, the renderer training uses. Batches are sorted by length
and left-padded so that short prompts don't pay for long ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmtailor.chat import render_prompt


@dataclass
class Generation:
    """One answer, and whether it used the whole token budget without ending its turn (i.e. was cut off)."""

    text: str
    hit_limit: bool


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    show_progress: bool = False,
    description: str = "Generating",
) -> list[str]:
    """Greedy answers, one per conversation, in input order."""
    return [g.text for g in generate_detailed(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                              batch_size=batch_size, show_progress=show_progress,
                                              description=description)]


def generate_detailed(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    show_progress: bool = False,
    description: str = "Generating",
    constraint: Callable[[], Any] | None = None,
) -> list[Generation]:
    """`generate`, plus per answer whether it was cut off: counted on the generated ids, because the decoded text
    hides budget spent on whitespace or special tokens that re-tokenising the answer cannot see.

    `constraint`, when given, makes a fresh grammar matcher (serve.structured.Constraint) per answer: every row is
    decoded under it, the way the server enforces `response_format`. Its stop ids must be the tokenizer's eos (what
    generation stops on here), or a finished document would run on unconstrained.
    """
    import torch

    if not conversations:
        return []
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[Generation] = [Generation("", False)] * len(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device

    from llmtailor.cli.output import progress_bar

    with progress_bar(description, len(encoded), enabled=show_progress) as advance:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            extra: dict[str, Any] = {}
            if constraint is not None:
                from transformers import LogitsProcessorList

                from llmtailor.serve.structured import batch_logits_processor

                extra["logits_processor"] = LogitsProcessorList(
                    [batch_logits_processor([constraint() for _ in idx], width, max_new_tokens)])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **extra,
                )
            for row, i in enumerate(idx):
                new = out[row, width:]
                cut = len(new) >= max_new_tokens and tokenizer.eos_token_id not in new.tolist()
                outputs[i] = Generation(tokenizer.decode(new, skip_special_tokens=True).strip(), cut)
            advance(len(idx))
    return outputs
