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
    lean: bool = True,
) -> list[Generation]:
    """`generate`, plus per answer whether it was cut off: counted on the generated ids, because the decoded text
    hides budget spent on whitespace or special tokens that re-tokenising the answer cannot see.

    `constraint`, when given, makes a fresh grammar matcher (serve.structured.Constraint) per answer: every row is
    decoded under it, the way the server enforces `response_format`. Its stop ids must be the tokenizer's eos (what
    generation stops on here), or a finished document would run on unconstrained.

    `lean`: decode through the server's lean step (serve/lean.py) where it applies (a plain Llama model or one LoRA
    adapter on it, on CPU, no constraint): the same greedy tokens as `model.generate`, fewer operations per token.
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

    plan = lean_plan(model) if lean and constraint is None else None

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
                if plan is not None:
                    out = _greedy(model, plan, input_ids.to(device), attention.to(device), max_new_tokens, pad_id,
                                  tokenizer.eos_token_id)
                else:
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


# generation-config settings under which `generate`'s greedy choice is not the plain argmax of the logits
_SCORE_SETTINGS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                   "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens", "suppress_tokens",
                   "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "sequence_bias",
                   "exponential_decay_length_penalty", "stop_strings", "force_words_ids", "constraints")


def lean_plan(model: Any) -> tuple[Any, Any] | None:
    """(LeanDecoder, LoraBatch or None) to decode `model` with, or None where `model.generate` must run: another
    architecture, not on CPU, DoRA or other adapters the lean step cannot apply, several adapters active at once."""
    from transformers import GenerationConfig

    from llmtailor.serve.lean import LeanDecoder, unsupported

    gc, default = getattr(model, "generation_config", None), GenerationConfig()
    if gc is not None and any(getattr(gc, k, None) != getattr(default, k, None) for k in _SCORE_SETTINGS):
        return None  # the generation config changes greedy scores (repetition penalty, banned words, ...)
    if unsupported(model) is None:
        return LeanDecoder(model), None
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if not isinstance(model, PeftModel):
        return None
    from llmtailor.serve.batching import plain_base
    from llmtailor.serve.lean_lora import lora_batch

    base = plain_base(model)
    if base is None or unsupported(base) is not None:
        return None
    lean = LeanDecoder(base)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    disabled = {m.disable_adapters for m in layers}
    if disabled <= {True}:  # no adapter layers, or inside `disable_adapter()`: the base answers
        return lean, None
    active = {tuple(m.active_adapters) for m in layers}
    if disabled != {False} or len(active) != 1 or len(names := next(iter(active))) != 1:
        return None  # some layers off, or several adapters active at once
    lora = lora_batch(model, lean, list(names), {})
    return None if lora is None else (lean, lora.for_rows(list(names)))


def _greedy(model: Any, plan: tuple[Any, Any], ids: Any, mask: Any, max_new_tokens: int, pad_id: int,
            eos_id: int) -> Any:
    """What `model.generate(do_sample=False)` returns for a left-padded batch: the prompt ids and then each row's
    greedy tokens, padding after its end of turn, stopping when every row has ended or the budget is spent. The
    prompt goes through the model's own forward (PEFT's, adapter active); every later token through the lean step."""
    import torch

    from llmtailor.serve.batching import last_position, new_cache

    lean, lora = plan
    rows = ids.shape[0]
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = new_cache(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, cache=cache,
                logits_to_keep=last_position(ids))
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    tokens: list[Any] = []
    logits = out.logits[:, -1]
    pos = pos[:, -1:]
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1).masked_fill(done, pad_id)
        tokens.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        pos = pos + 1
        logits = lean.step(nxt[:, None], mask, pos, cache, lora)
    return torch.cat([ids, torch.stack(tokens, dim=1)], dim=1)
