"""Evol-Instruct prompt templates (Xu et al., WizardLM, 2023) and the checks that eliminate failed evolutions.

In-depth evolution rewrites an instruction into a harder one (add a constraint, deepen, concretise, ask for
reasoning); in-breadth evolution writes a new instruction of the same domain. The paper's elimination step drops
evolutions that add nothing (a copy of the seed), leak the template ("#Rewritten Prompt#"), or are empty; here the
answer is also checked against the task's JSON Schema and the token limit, and every drop is counted by reason.
"""

from __future__ import annotations

import random
import re
from typing import Literal

Op = Literal["constraints", "deepen", "concretise", "reasoning", "breadth"]
OPS: tuple[str, ...] = ("constraints", "deepen", "concretise", "reasoning", "breadth")

_DEPTH = (
    "I want you to act as a Prompt Rewriter. Your objective is to rewrite a given prompt into a more complex "
    "version, to make it a bit harder to handle, while it stays reasonable, understandable and answerable by "
    "humans. Keep any non-text parts (tables, code, IDs, JSON) of the given prompt. Do not omit its input.\n"
    "You SHOULD complicate the given prompt using the following method:\n{method}\n"
    "Add at most 10 to 20 words to #The Given Prompt#. '#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' "
    "and 'rewritten prompt' must not appear in #Rewritten Prompt#.\n\n"
    "#The Given Prompt#:\n{instruction}\n\n#Rewritten Prompt#:\n"
)
_METHODS = {
    "constraints": "Please add one more constraint or requirement into #The Given Prompt#.",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, increase the depth and breadth of the "
    "inquiry.",
    "concretise": "Please replace general concepts with more specific concepts.",
    "reasoning": "If #The Given Prompt# can be solved with just a few simple thinking steps, rewrite it to "
    "explicitly request multiple-step reasoning.",
}
_BREADTH = (
    "I want you to act as a Prompt Creator. Your goal is to draw inspiration from #The Given Prompt# to create a "
    "brand new prompt. This new prompt should belong to the same domain as #The Given Prompt# but be rarer. The "
    "length and complexity of #Created Prompt# should be similar to those of #The Given Prompt#. #Created Prompt# "
    "must be reasonable and understandable by humans. '#The Given Prompt#', '#Created Prompt#', 'given prompt' and "
    "'created prompt' must not appear in #Created Prompt#.\n\n"
    "#The Given Prompt#:\n{instruction}\n\n#Created Prompt#:\n"
)
_LEAK = re.compile(r"#?\s*(the\s+)?(given|rewritten|created)\s+prompt\s*#?", re.IGNORECASE)
_LABEL = re.compile(r"^\s*#?\s*(rewritten|created)\s+prompt\s*#?\s*:?\s*", re.IGNORECASE)


def evolution_prompt(op: str, instruction: str) -> list[dict[str, str]]:
    """The chat sent to the generator to evolve `instruction` with `op`."""
    if op == "breadth":
        text = _BREADTH.format(instruction=instruction)
    elif op in _METHODS:
        text = _DEPTH.format(method=_METHODS[op], instruction=instruction)
    else:
        raise ValueError(f"unknown evolution op {op!r}; expected one of {', '.join(OPS)}")
    return [{"role": "user", "content": text}]


def clean_evolved(text: str) -> str:
    """The evolved instruction without a leading '#Rewritten Prompt#:' label the generator may echo."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def pick_ops(ops: list[str], n: int, seed_key: str, base_seed: int) -> list[str]:
    """n ops for one seed, deterministic per (seed row, config seed) so a rerun asks for the same evolutions."""
    rng = random.Random(f"{base_seed}:{seed_key}")
    return [rng.choice(ops) for _ in range(n)]


def leaks_template(text: str) -> bool:
    """The generator copied the template's markers into its instruction (the paper eliminates these)."""
    return bool(_LEAK.search(text))
