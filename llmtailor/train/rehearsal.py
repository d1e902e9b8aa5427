"""Self-rehearsal: the model's own answers to general prompts, mixed into fine-tuning so it keeps its manners.

A task adapter trained only on rows with the task's system prompt also changes how the model answers everything
else (on the demo, LoRA on 291 tickets turned "What is the capital of France?" into `"france capital"`). Rehearsal
rows hold that behaviour in place: before training, the model about to be tuned answers general prompts (shipped
in assets/train/rehearsal_prompts.jsonl, or the user's own file) greedily, and those (prompt, answer) pairs join the
training rows. They teach nothing the model did not already do, so they cannot leak an evaluation answer; they only
tell the adapter that outside the task the old answers stand (self-synthesized rehearsal, Huang et al. 2024).

An answer that runs into the token budget is cut back to its last whole sentence (a cut-off answer would teach the
model to stop mid-sentence); one without a whole sentence is dropped. The small model answers open prompts at
length, so without this most answers were lost (34 of 48 at 160 tokens on the demo). The rows are written to the
run folder, so a resumed run trains on exactly the same rows.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from llmtailor.errors import RowError, TailorError
from llmtailor.io import read_jsonl, write_jsonl

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "train" / "rehearsal_prompts.jsonl"
ORIGIN = "rehearsal"


def load_prompts(path: Path | None = None) -> list[str]:
    """Prompts from a JSONL file of {"prompt": ...} rows (the shipped set when no path is given)."""
    path = Path(path) if path is not None else PROMPTS
    if not path.exists():
        raise TailorError(f"{path}: rehearsal prompts file not found (train.rehearsal_prompts)")
    prompts = []
    for line, row in read_jsonl(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RowError(path, line, "prompt", "must be a non-empty string")
        prompts.append(prompt.strip())
    if not prompts:
        raise TailorError(f"{path}: no rehearsal prompts in the file")
    return prompts


_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)(?=\s|$)")


def whole_sentences(text: str) -> str:
    """`text` up to the end of its last complete sentence ("" when it has none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


def build_rows(model: Any, tokenizer: Any, count: int, *, prompts_path: Path | None = None,
               max_new_tokens: int = 160, seed: int = 42, batch_size: int = 8,
               show_progress: bool = False) -> tuple[list[dict], dict]:
    """Up to `count` rows of (prompt, the model's own greedy answer), and a summary for run.json."""
    from llmtailor.generate import generate_detailed

    prompts = load_prompts(prompts_path)
    picked = random.Random(seed).sample(prompts, min(count, len(prompts)))
    convs = [[{"role": "user", "content": p}] for p in picked]
    was_training = model.training
    model.eval()
    try:
        answers = generate_detailed(model, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    show_progress=show_progress, description="rehearsal answers")
    finally:
        model.train(was_training)
    rows, cut, trimmed, empty = [], 0, 0, 0
    for i, (conv, gen) in enumerate(zip(convs, answers, strict=True)):
        text = gen.text.strip()
        if gen.hit_limit:
            text = whole_sentences(text)
            if not text:
                cut += 1
                continue
            trimmed += 1
        if not text:
            empty += 1
            continue
        rows.append({"messages": [*conv, {"role": "assistant", "content": text}],
                     "id": f"rehearsal-{i:03d}", "origin": ORIGIN})
    summary = {"asked": len(picked), "kept": len(rows), "trimmed_to_sentence": trimmed, "dropped_cut_off": cut,
               "dropped_empty": empty, "prompts": str(prompts_path) if prompts_path else "builtin",
               "max_new_tokens": max_new_tokens}
    return rows, summary


def rehearsal_rows(run_dir: Path, model: Any, tokenizer: Any, count: int, *, resume: bool, **kwargs: Any
                   ) -> tuple[list[dict], dict | None]:
    """The run's rehearsal rows: generated once and kept in run_dir/rehearsal.jsonl, reread on resume."""
    path = run_dir / "rehearsal.jsonl"
    if resume and path.exists():
        return [row for _, row in read_jsonl(path)], None
    rows, summary = build_rows(model, tokenizer, count, **kwargs)
    write_jsonl(path, rows)
    return rows, summary
