"""`tailor data preferences`: build preference pairs from a model's own sampled answers.

For each training prompt the model (the base, or a run's adapter) samples several answers; a rule ranks them: JSON
schema validity first (when `eval.json_schema` is set), then the share of the reference object's fields matched,
then token F1 against the reference answer. The best and the worst distinct answers make a pair when the rule
prefers one; with `preference.gold_as_chosen` the reference answer replaces a best answer that falls short of it, so
the pairs teach exactly where the model fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.chat import render_prompt
from llmtailor.errors import TailorError
from llmtailor.eval.metrics import field_accuracy, json_compliance, parse_json_output, token_f1
from llmtailor.io import write_jsonl

Score = tuple[float, float, float]


def score_answer(answer: str, reference: str | None, schema: dict | None) -> Score:
    """(schema-valid, field match, token F1): compared as a tuple, so validity dominates, then fields, then words."""
    valid = float(json_compliance(answer, schema)["valid"]) if schema is not None else 0.0
    fields = 0.0
    f1 = 0.0
    if reference is not None:
        ref_obj, _ = parse_json_output(reference)
        if isinstance(ref_obj, dict) and ref_obj:
            pred_obj, _ = parse_json_output(answer)
            hits = field_accuracy(pred_obj, ref_obj)
            fields = sum(hits.values()) / len(hits) if hits else 0.0
        f1 = token_f1(answer, reference)
    return (valid, fields, f1)


@dataclass
class PairStats:
    """What the builder made, for the command's summary and --json."""

    prompts: int = 0
    pairs: int = 0
    no_distinct_pair: int = 0
    gold_chosen: int = 0
    answers: int = 0
    out: str = ""
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "pairs": self.pairs, "no_distinct_pair": self.no_distinct_pair,
                "gold_chosen": self.gold_chosen, "answers_sampled": self.answers, "out": self.out,
                "model": self.model, **self.extra}


def make_pair(prompt: list[dict], answers: list[str], reference: str | None, schema: dict | None,
              gold_as_chosen: bool) -> tuple[dict[str, Any] | None, bool]:
    """The pair for one prompt (or None when every distinct answer ties), and whether the reference was chosen."""
    distinct = list(dict.fromkeys(a.strip() for a in answers if a.strip()))
    if not distinct:
        return None, False
    scored = sorted(((score_answer(a, reference, schema), a) for a in distinct), key=lambda x: x[0])
    (worst_s, worst), (best_s, best) = scored[0], scored[-1]
    gold = False
    if gold_as_chosen and reference is not None and reference.strip() and reference.strip() != worst:
        ref_s = score_answer(reference, reference, schema)
        if best_s < ref_s:
            best_s, best, gold = ref_s, reference.strip(), True
    if not best_s > worst_s or best == worst:
        return None, False
    return {"prompt": prompt, "chosen": best, "rejected": worst,
            "meta": {"chosen_score": list(best_s), "rejected_score": list(worst_s), "chosen_is_reference": gold,
                     "distinct_answers": len(distinct)}}, gold


def sample_answers(model: Any, tokenizer: Any, prompts: list[list[dict]], n: int, *, temperature: float,
                   top_p: float, max_new_tokens: int, seed: int, batch_size: int = 4,
                   show_progress: bool = False) -> list[list[str]]:
    """n sampled answers per prompt (left-padded batches, prompts through the one renderer)."""
    import torch

    from llmtailor.cli.output import progress_bar

    torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    encoded = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[list[str]] = []
    with progress_bar("Sampling answers", len(prompts), enabled=show_progress) as advance:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, e in enumerate(chunk):
                ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
                mask[row, width - len(e):] = 1
            with torch.inference_mode():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                     temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=n,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                     eos_token_id=tokenizer.eos_token_id)
            texts = [tokenizer.decode(g[width:], skip_special_tokens=True).strip() for g in gen]
            out.extend(texts[i * n:(i + 1) * n] for i in range(len(chunk)))
            advance(len(chunk))
    return out


def build_preferences(cfg: Any, train_rows: list[dict], model: Any, tokenizer: Any, *, samples: int | None = None,
                      out: Path | None = None, show_progress: bool = False) -> PairStats:
    """Sample, rank, pair; write the pairs atomically to `out` (default `preference.out`)."""
    from llmtailor.eval.metrics import load_schema

    p = cfg.preference
    n = samples or p.samples
    if n < 2:
        raise TailorError("--samples: at least 2 answers per prompt are needed to make a pair")
    schema = load_schema(cfg.eval.json_schema) if cfg.eval.json_schema else None
    items = []
    for row in train_rows:
        msgs = row["messages"]
        if msgs and msgs[-1]["role"] == "assistant":
            items.append((msgs[:-1], msgs[-1]["content"]))
    if p.max_prompts:
        items = items[: p.max_prompts]
    if not items:
        raise TailorError("no training rows ending with an assistant answer to build preference pairs from")
    answers = sample_answers(model, tokenizer, [i[0] for i in items], n, temperature=p.temperature, top_p=p.top_p,
                             max_new_tokens=p.max_new_tokens, seed=p.seed, show_progress=show_progress)
    stats = PairStats(prompts=len(items), answers=len(items) * n)
    rows = []
    for (prompt, ref), sampled in zip(items, answers, strict=True):
        pair, gold = make_pair(prompt, sampled, ref, schema, p.gold_as_chosen)
        if pair is None:
            stats.no_distinct_pair += 1
            continue
        rows.append(pair)
        stats.gold_chosen += int(gold)
    stats.pairs = len(rows)
    target = Path(out or p.out)
    if rows:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(target, rows)
    stats.out = str(target)
    return stats


def summary_line(stats: PairStats) -> str:
    """One sentence for people."""
    return (f"{stats.pairs} pairs from {stats.prompts} prompts ({stats.answers} answers sampled); "
            f"{stats.no_distinct_pair} prompts had no distinct pair; reference chosen in {stats.gold_chosen}")
