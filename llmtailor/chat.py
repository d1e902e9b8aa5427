"""The one prompt renderer: training, evaluation and serving all build token sequences here.

Using the tokenizer's own chat template through a single function means the prompt a model is
trained on and the prompt it is asked at generation time can never disagree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


def as_dicts(messages: list[Message] | list[dict[str, Any]]) -> list[dict[str, str]]:
    """Plain {role, content} dicts as chat templates expect them."""
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append({"role": m.role, "content": m.content})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def render_prompt(tokenizer: Any, messages: list[Message] | list[dict[str, Any]]) -> str:
    """Text the model sees before it answers: every turn given, then the assistant header."""
    return tokenizer.apply_chat_template(as_dicts(messages), tokenize=False, add_generation_prompt=True)


def render_conversation(tokenizer: Any, messages: list[Message] | list[dict[str, Any]]) -> str:
    """Text of a whole conversation, assistant turns included (what training reads)."""
    return tokenizer.apply_chat_template(as_dicts(messages), tokenize=False, add_generation_prompt=False)


def tokenize_for_training(
    tokenizer: Any, messages: list[Message] | list[dict[str, Any]], assistant_only: bool = True
) -> dict[str, list[int]]:
    """Token ids of a conversation plus a mask that is 1 on tokens the loss should see.

    The assistant spans are found by rendering each prefix with `render_prompt`, the same function
    used at generation time, so the trained-on context is exactly the generation prompt.
    """
    msgs = as_dicts(messages)
    full = render_conversation(tokenizer, msgs)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = render_prompt(tokenizer, msgs[:i])
        upto = render_conversation(tokenizer, msgs[: i + 1])
        if not full.startswith(prefix) or not full.startswith(upto):
            raise ValueError("chat template does not render conversations prefix-consistently")
        # The template's newline after the end-of-turn token is not part of the answer.
        spans.append((len(prefix), len(upto.rstrip("\n"))))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    if not assistant_only:
        return {"input_ids": ids, "completion_mask": [1] * len(ids)}
    mask = []
    for start, end in enc["offset_mapping"]:
        inside = any(s <= start and end <= e and end > start for s, e in spans)
        mask.append(1 if inside else 0)
    # The end-of-turn token is inside the span, so the model learns to stop.
    return {"input_ids": ids, "completion_mask": mask}


def prompt_ids(tokenizer: Any, messages: list[Message] | list[dict[str, Any]]) -> list[int]:
    """Token ids of the generation prompt."""
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
