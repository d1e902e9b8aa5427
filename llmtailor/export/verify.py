"""Does llama.cpp, on an exported file, choose the tokens transformers chooses? Greedy decoding on both sides.

Two measures, both over token positions: *teacher-forced* (llama.cpp reads transformers' greedy answer and its argmax
is compared at every answer position, so one early flip does not cascade) and *free-running* (each side generates its
own answer; positions compared one to one, a missing position counts as a disagreement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Agreement:
    """Matches over positions for both measures, and how many answers came out token-identical."""

    forced_match: int = 0
    forced_total: int = 0
    free_match: int = 0
    free_total: int = 0
    identical: int = 0
    answers: int = 0

    @property
    def teacher_forced(self) -> float:
        return self.forced_match / self.forced_total if self.forced_total else 1.0

    @property
    def free_running(self) -> float:
        return self.free_match / self.free_total if self.free_total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"teacher_forced": round(self.teacher_forced, 4), "free_running": round(self.free_running, 4),
                "identical_answers": self.identical, "answers": self.answers, "positions": self.forced_total}


def hf_greedy(model: Any, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int]) -> list[int]:
    """transformers' greedy answer (token ids, stop token excluded), one prompt at a time (no padding effects)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([list(prompt_ids)]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=list(eos_ids), pad_token_id=eos_ids[0])
    answer = out[0, len(prompt_ids):].tolist()
    for i, t in enumerate(answer):
        if t in eos_ids:
            return answer[:i]
    return answer


def llama_greedy(llm: Any, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int]) -> list[int]:
    """llama.cpp's greedy answer from token ids (temperature 0, no repetition penalty)."""
    out: list[int] = []
    for tok in llm.generate(list(prompt_ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                            reset=True):
        if tok in eos_ids or len(out) >= max_new_tokens:
            break
        out.append(int(tok))
    return out


def llama_forced_argmax(llm: Any, prompt_ids: Sequence[int], answer: Sequence[int]) -> list[int]:
    """llama.cpp's argmax at each answer position when it reads prompt + answer (needs Llama(logits_all=True))."""
    seq = list(prompt_ids) + list(answer)
    llm.reset()
    llm.eval(seq)
    scores = np.asarray(llm.scores[len(prompt_ids) - 1: len(seq) - 1])
    return scores.argmax(-1).tolist()


def compare(llm: Any, prompts: Sequence[Sequence[int]], references: Sequence[Sequence[int]], max_new_tokens: int,
            eos_ids: Sequence[int]) -> tuple[Agreement, list[list[int]]]:
    """Agreement of llama.cpp with the reference answers, and llama.cpp's own greedy answers."""
    agg = Agreement()
    answers = []
    for prompt, ref in zip(prompts, references, strict=True):
        target = list(ref) + ([eos_ids[0]] if len(ref) < max_new_tokens else [])  # the stop is a choice too
        forced = llama_forced_argmax(llm, prompt, target)
        agg.forced_match += sum(int(a == b) for a, b in zip(forced, target, strict=True))
        agg.forced_total += len(target)
        own = llama_greedy(llm, prompt, max_new_tokens, eos_ids)
        answers.append(own)
        agg.free_match += sum(int(a == b) for a, b in zip(own, ref, strict=False))
        agg.free_total += max(len(own), len(ref))
        agg.identical += int(own == list(ref))
        agg.answers += 1
    return agg, answers
