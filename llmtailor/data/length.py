"""Overlength rows: drop them, or cut the final answer so the rendered row fits max_seq_len.

Training would silently truncate long rows anyway, possibly mid-prompt; doing it here makes the cut
visible in the data card and keeps the whole prompt.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmtailor.data.rows import Row
from llmtailor.data.validate import token_length


def truncate_to_fit(row: Row, tokenizer: Any, max_seq_len: int) -> Row | None:
    """Shorten the last assistant turn to as many of its tokens as fit (`tokens` set); None when none fit."""
    last = len(row.messages) - 1
    content = row.messages[last]["content"]
    offsets = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    def cut(k: int) -> list[dict[str, str]] | None:
        text = content[: offsets[k - 1][1]].rstrip()
        if not text:
            return None
        return [*row.messages[:last], {"role": "assistant", "content": text}]

    def fits(k: int) -> int | None:
        messages = cut(k)
        if messages is None:
            return None
        n = token_length(tokenizer, messages)
        return n if n <= max_seq_len else None

    # The smallest cut with any visible text (an answer may start with whitespace tokens).
    first = next((k for k in range(1, len(offsets) + 1) if content[: offsets[k - 1][1]].strip()), None)
    if first is None or fits(first) is None:
        return None
    lo, hi = first, len(offsets)  # invariant: k=lo fits, k=hi (the whole answer) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid) is not None:
            lo = mid
        else:
            hi = mid
    messages = cut(lo)
    assert messages is not None
    return replace(row, messages=messages, tokens=token_length(tokenizer, messages))
