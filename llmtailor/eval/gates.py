"""Release gates: `metric op threshold` strings checked against results.json, for CI pipelines.

A gate names a value in the evaluation results:

* `json_compliance >= 0.95`: a ladder metric of the candidate variant (tuned when evaluated, else the last one);
* `base_fewshot.accuracy > 0.5`: the same metric of a named variant (`tuned_constrained.json_compliance` for the
  constrained-decoding twin); `field_accuracy.priority >= 0.8` reads one field of per-field accuracy;
* `regression.drop <= 0.05`, `regression.arithmetic.drop <= 0.1`: loss of general ability, tuned vs base;
* `redteam.refusal >= 0.9`, `redteam.over_refusal <= 0.2`, `redteam.harmful.refusal >= 0.9`: the tuned model's
  refusal on harmful probes and over-refusal on benign ones;
* `judge.win_rate >= 0.5`, `judge.tuned_rag.win_rate >= 0.5`: pairwise win rate against base;
* `data.leakage == 0`, `data.leakage_rate <= 0.01`, `data.near.leakage == 0`: eval rows that also occur in the
  training data (exact + near duplicates), from the dataset card; a property of the data, not of a variant.

Gates are parsed when the config is loaded (a typo fails in seconds, not after an hour of evaluation). A gate whose
value was not measured (e.g. the red-team was off) fails with that reason: a CI gate must never pass silently.
"""

from __future__ import annotations

import operator
import re
from dataclasses import asdict, dataclass
from typing import Any

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_GATE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
NAMESPACES = {
    "regression": {"drop", "base", "tuned", "perplexity_ratio"},
    "redteam": {"refusal", "over_refusal", "pass_rate"},
    "judge": {"win_rate", "tie_rate", "loss_rate", "agreement"},
    "data": {"leakage", "leakage_rate"},
}
_NOT_RUN = {"data": "no leakage check in the results: rerun `tailor eval` (or `tailor data prepare` first)"}
LADDER_METRICS = {
    "exact_match", "token_f1", "rouge_l", "bleu", "json_parse_rate", "json_compliance", "json_extra_text_rate",
    "field_accuracy", "field_accuracy_mean", "accuracy", "macro_f1", "unscorable_rate", "truncated_rate",
    "answer_length_tokens", "eval_loss", "perplexity", "examples_per_s", "generation_s", "faithfulness",
    "answer_relevance", "context_precision", "context_recall", "citation_correctness", "abstain_rate", "cite_rate",
}
_VARIANT = re.compile(r"^(base|tuned)(_(fewshot|rag))*(_constrained)?$")  # _constrained: eval.constrained_decoding


@dataclass(frozen=True)
class Gate:
    """One parsed gate."""

    text: str
    path: tuple[str, ...]
    op: str
    threshold: float


def parse_gate(text: str) -> Gate:
    """Parse and validate `metric op number`; raises ValueError with a fix-it message."""
    if not isinstance(text, str):
        raise ValueError(f"gate {text!r} must be a string like 'json_compliance >= 0.95'")
    m = _GATE.match(text)
    if not m:
        raise ValueError(
            f"gate {text!r} is not 'METRIC OP NUMBER' (OP one of >=, <=, >, <, ==, !=), e.g. 'json_compliance >= 0.95'"
        )
    path = tuple(m.group(1).split("."))
    head = path[0]
    if head in NAMESPACES:
        if len(path) not in (2, 3) or path[-1] not in NAMESPACES[head]:
            raise ValueError(
                f"gate {text!r}: {head} gates end in one of {sorted(NAMESPACES[head])} "
                f"(e.g. '{head}.{sorted(NAMESPACES[head])[0]}' or '{head}.CATEGORY.{sorted(NAMESPACES[head])[0]}')"
            )
    else:
        rest = path[1:] if _VARIANT.match(head) else path
        if not rest or rest[0] not in LADDER_METRICS:
            import difflib

            name = rest[0] if rest else head
            # `leakage` alone, `drop` alone...: the metric exists, but under its section.
            owner = next((f"{ns}.{name}" for ns, keys in NAMESPACES.items() if name in keys), None)
            close = [owner] if owner else difflib.get_close_matches(name, sorted(LADDER_METRICS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"gate {text!r}: unknown metric '{'.'.join(rest) or head}'{hint}")
        if len(rest) > 2 or (len(rest) == 2 and rest[0] != "field_accuracy"):
            raise ValueError(f"gate {text!r}: only field_accuracy takes a sub-key (field_accuracy.FIELD)")
    return Gate(text.strip(), path, m.group(2), float(m.group(3)))


def candidate_variant(variants: dict[str, Any]) -> str | None:
    """The variant an unprefixed gate talks about: tuned when evaluated, else the last variant."""
    if "tuned" in variants:
        return "tuned"
    return list(variants)[-1] if variants else None


def _lookup(results: dict, gate: Gate) -> tuple[float | None, str]:
    """The measured value a gate refers to, or (None, why not)."""
    path = gate.path
    head = path[0]
    if head in NAMESPACES:
        section = results.get(head)
        if not isinstance(section, dict) or section.get("status") == "skipped":
            if head in _NOT_RUN:
                reason = section.get("reason") if isinstance(section, dict) else None
                return None, reason or _NOT_RUN[head]
            return None, f"{head} was not run (enable eval.{head})"
        value: Any = section.get("gate_values", {})
        key = ".".join(path[1:])
        value = value.get(key)
        return (float(value), key) if isinstance(value, int | float) else (None, f"{key} not measured")
    variants = results.get("variants", {})
    if _VARIANT.match(head):
        name, rest = head, path[1:]
        if name not in variants:
            return None, f"variant {name} was not evaluated"
    else:
        name, rest = candidate_variant(variants), path
        if name is None:
            return None, "no variant evaluated"
    value = variants[name].get(rest[0])
    if len(rest) == 2:
        value = value.get(rest[1]) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"{'.'.join(rest)} not measured for {name}"
    return float(value), name


def check_gates(gates: list[str], results: dict) -> list[dict]:
    """Evaluate every gate against results.json content: one dict per gate with value, passed and reason."""
    out = []
    for text in gates:
        gate = parse_gate(text)
        value, where = _lookup(results, gate)
        passed = value is not None and bool(OPS[gate.op](value, gate.threshold))
        if value is None:
            reason = where
        else:
            reason = f"{value:.4g} {gate.op} {gate.threshold:g}" + ("" if passed else " is false")
        out.append({**asdict(gate), "path": ".".join(gate.path), "value": value, "passed": passed, "reason": reason,
                    "variant": where if value is not None and gate.path[0] not in NAMESPACES else None})
    return out
