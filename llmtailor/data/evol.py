"""Evol-Instruct prompt templates (Xu et al., WizardLM, 2023) and the checks that eliminate failed evolutions.

In-depth evolution rewrites an instruction into a harder one (add a constraint, deepen, concretise, ask for
reasoning); in-breadth evolution writes a new instruction of the same domain. The paper's elimination step drops
evolutions that add nothing (a copy of the seed), leak the template ("#Rewritten Prompt#"), or are empty; here the
answer is also checked against the task's JSON Schema and the token limit, and every drop is counted by reason.

Two template styles. `wizardlm` is the paper's meta-prompt ("act as a Prompt Rewriter ... #The Given Prompt#"),
written for GPT-4-class generators; a ~100M model echoes its markers or writes about "the prompt" instead of
rewriting it. `direct` asks the same thing plainly, with no meta-vocabulary, and shows other seed rows as examples
of the domain (few-shot), so a small model only has to continue a familiar pattern.
"""

from __future__ import annotations

import random
import re
from typing import Literal

Op = Literal["constraints", "deepen", "concretise", "reasoning", "breadth"]
OPS: tuple[str, ...] = ("constraints", "deepen", "concretise", "reasoning", "breadth")
TEMPLATES: tuple[str, ...] = ("auto", "wizardlm", "direct")
# auto picks wizardlm only for a local generator this large (parameters); below it, and for endpoints (size unknown),
# direct: it works with any model, wizardlm only with large ones.
WIZARDLM_MIN_PARAMS = 1_000_000_000

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
_DIRECT_ASK = {
    "breadth": "Write a different {noun} that someone could send, about another problem. Keep the same style.",
    "constraints": "Write this {noun} again, adding one more requirement or deadline from the sender.",
    "deepen": "Write this {noun} again, with more detail about the problem and one more question about it.",
    "concretise": "Write this {noun} again, with more specific details: names, numbers, dates, products.",
    "reasoning": "Write this {noun} again, asking for the steps to solve the problem and the reason for each step.",
}
_DIRECT_TAIL = "Write only the new {noun}."
_LEAK = re.compile(r"#?\s*(the\s+)?(given|rewritten|created)\s+prompt\s*#?", re.IGNORECASE)
# The direct template's own phrases: echoed, they are a leak exactly like "#The Given Prompt#".
_DIRECT_LEAK = re.compile(r"write only the new|write this \w+ again|here are \w+ that people sent|"
                          r"here is another \w+:|that someone could send", re.IGNORECASE)
# Meta-text a small model writes about its own output anywhere in it ("Here's the updated message:", a bare
# "Message:" line, assistant talk): the row would teach the task model to read commentary as the sender's words.
_META = re.compile(r"\bhere(?:'s|’s| is| are)\s+(?:a |an |the |my |your )?(?:different|new|updated|rewritten|revised|"
                   r"additional|modified|improved|follow-up|more \w+)\s+(?:message|ticket|request|version|email|text)|"
                   r"^\s*(?:new |updated |rewritten |revised )?(?:message|ticket|request)\s*\d*\s*:\s*$|"
                   r"\bas an ai\b|\bi was designed to\b|\bsorry for (?:the|any) confusion\b",
                   re.IGNORECASE | re.MULTILINE)
_LABEL = re.compile(r"^\s*#?\s*(rewritten|created)\s+prompt\s*#?\s*:?\s*", re.IGNORECASE)
# A short label line a small model puts before the text it was asked for ("New message:", "Here is the rewritten
# message:"); only a whole first line ending in a colon, so a ticket's own first line is never cut.
_ECHO = re.compile(r"^\s*(sure[!,.]?\s*)?(here\s+is\s+|here's\s+)?[\w' -]{0,40}"
                   r"(message|request|ticket|version|text|email)\s*:\s*\n", re.IGNORECASE)

# A line that is only "Message 3:" (the few-shot list's label): the model started another example; cut there.
_NEXT = re.compile(r"\n\s*[A-Za-z]+ \d+\s*:\s*(\n|$)")


def evolution_prompt(op: str, instruction: str, template: str = "wizardlm", examples: list[str] | None = None,
                     noun: str = "message") -> list[dict[str, str]]:
    """The chat sent to the generator to evolve `instruction` with `op`, in the `template` style."""
    if op not in OPS:
        raise ValueError(f"unknown evolution op {op!r}; expected one of {', '.join(OPS)}")
    if template == "direct":
        return [{"role": "user", "content": direct_prompt(op, instruction, examples or [], noun)}]
    if template != "wizardlm":
        raise ValueError(f"unknown template {template!r}; expected wizardlm or direct (auto is resolved before)")
    if op == "breadth":
        text = _BREADTH.format(instruction=instruction)
    else:
        text = _DEPTH.format(method=_METHODS[op], instruction=instruction)
    return [{"role": "user", "content": text}]


def direct_prompt(op: str, instruction: str, examples: list[str], noun: str = "message") -> str:
    """A plain request with no meta-vocabulary: example rows of the domain, the seed, then one short ask."""
    parts = [f"Here are {noun}s that people sent:"] if examples else []
    parts += [f"{noun.capitalize()} {i}:\n{ex.strip()}" for i, ex in enumerate(examples, 1)]
    parts.append(f"Here is another {noun}:\n\n{instruction.strip()}" if examples
                 else f"Here is a {noun} that someone sent:\n\n{instruction.strip()}")
    parts.append(_DIRECT_ASK[op].format(noun=noun) + " " + _DIRECT_TAIL.format(noun=noun))
    return "\n\n".join(parts)


def clean_evolved(text: str) -> str:
    """The evolved instruction without a leading label the generator may echo ('#Rewritten Prompt#:', 'New
    message:'), and without surrounding quotes or a code fence."""
    text = _LABEL.sub("", text.strip(), count=1).strip()
    text = _ECHO.sub("", text + "\n", count=1).strip()
    text = _NEXT.split(text, maxsplit=1)[0].strip()  # the model went on to list "Message 3:", "Message 4:"...
    text = text.strip("`").strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def pick_ops(ops: list[str], n: int, seed_key: str, base_seed: int) -> list[str]:
    """n ops for one seed, deterministic per (seed row, config seed) so a rerun asks for the same evolutions."""
    rng = random.Random(f"{base_seed}:{seed_key}")
    return [rng.choice(ops) for _ in range(n)]


def leaks_template(text: str) -> bool:
    """The generator copied the template's markers into its instruction (the paper eliminates these)."""
    return bool(_LEAK.search(text) or _DIRECT_LEAK.search(text) or _META.search(text))


def pick_examples(pool: list[str], seed: str, k: int, seed_key: str, base_seed: int) -> list[str]:
    """k other seed instructions shown as examples of the domain, deterministic per (seed row, config seed)."""
    others = [x for x in dict.fromkeys(pool) if x != seed]
    if k <= 0 or not others:
        return []
    return random.Random(f"examples:{base_seed}:{seed_key}").sample(others, min(k, len(others)))


def repetitive(text: str, min_distinct: float = 0.6) -> bool:
    """A generation stuck in a loop: under 60% of its word 3-grams are distinct (ordinary text is above 90%)."""
    tokens = text.lower().split()
    grams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    return len(grams) >= 12 and len(set(grams)) / len(grams) < min_distinct
