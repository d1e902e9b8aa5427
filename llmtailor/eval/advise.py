"""Plain-words advice from a finished ladder: which adaptation to ship, what each step buys, is it safe.

Rules (deterministic, from results.json only):
1. Among the variants, the *best* is the one with the highest headline metric (accuracy for label tasks, mean field
   accuracy for JSON tasks, token F1 for text). The *candidate* is the cheapest variant (prompting < RAG <
   fine-tuning < fine-tuning + RAG; a constrained-decoding variant right after its free one) that is not
   significantly worse than the best (paired bootstrap).
2. Verdict first, so nobody reads "Ship" above a failed gate: when a gate failed, the first line is "Do not ship"
   with each failed gate's measured value against its threshold, and the candidate is only named further down.
   Only when no gate failed does the first line say "Ship <candidate>".
3. Next, every task metric on which the candidate is worse than a cheaper variant, with both numbers (a tuned model
   that beats few-shot on field accuracy but loses on schema compliance must say so, not bury it).
4. Each rung is then described relative to the best ("RAG alone reaches 92% of tuned+RAG"), by what it adds on
   format compliance ("fine-tuning adds JSON compliance 61% -> 99%"), and by what constrained decoding adds.
5. Regression, red-team and judge results, when present, are appended (as warnings when they look bad).
"""

from __future__ import annotations

from typing import Any

from llmtailor.eval.config import CONSTRAINED_SUFFIX
from llmtailor.eval.evaluate import COST_ORDER

LABELS = {"accuracy": "accuracy", "field_accuracy_mean": "field accuracy", "token_f1": "token F1",
          "json_compliance": "JSON compliance", "exact_match": "exact match", "macro_f1": "macro-F1"}
PRETTY = {"base": "the base model (system prompt only)", "base_fewshot": "few-shot prompting",
          "base_rag": "RAG alone", "base_fewshot_rag": "few-shot + RAG", "tuned": "the fine-tuned model",
          "tuned_fewshot": "fine-tuned + few-shot", "tuned_rag": "fine-tuned + RAG", "tuned_fewshot_rag":
          "fine-tuned + few-shot + RAG"}
# Metrics on which "worse than a cheaper variant" is worth a line of its own (higher is better for all of them).
TASK_METRICS = ("accuracy", "macro_f1", "field_accuracy_mean", "json_compliance", "exact_match", "token_f1")
# A failed gate `a >= t` means the measured value is `< t`: say what was measured, not what was wanted.
NEGATED = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _cost(name: str) -> int:
    return COST_ORDER.index(name) if name in COST_ORDER else len(COST_ORDER)


def _pretty(name: str) -> str:
    if name.endswith(CONSTRAINED_SUFFIX):
        free = name[: -len(CONSTRAINED_SUFFIX)]
        return f"{PRETTY.get(free, free)} with constrained decoding"
    return PRETTY.get(name, name)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def gate_text(g: dict) -> str:
    """`json_compliance 0.25 < 0.9`: the failed gate's measured value against its threshold (or why unmeasured)."""
    if g.get("value") is None:
        return f"{g['path']} not measured: {g['reason']}"
    return f"{g['path']} {g['value']:.4g} {NEGATED.get(g['op'], 'vs')} {g['threshold']:g}"


def worse_than_cheaper(variants: dict[str, dict], choice: str) -> list[dict]:
    """Task metrics on which `choice` scores below a cheaper variant: one entry per metric, against the cheaper
    variant that scores highest on it."""
    out = []
    mine = variants.get(choice) or {}
    for m in TASK_METRICS:
        v = _num(mine.get(m))
        if v is None:
            continue
        cheaper = {n: _num(s.get(m)) for n, s in variants.items() if _cost(n) < _cost(choice)}
        better = {n: x for n, x in cheaper.items() if x is not None and x > v}
        if better:
            other = max(better, key=lambda n: (better[n], -_cost(n)))
            out.append({"metric": m, "variant": choice, "value": v, "cheaper": other, "cheaper_value": better[other]})
    return out


def advise(results: dict[str, Any]) -> dict[str, Any]:
    """{ship, recommendation, candidate, blocking, worse_than_cheaper, lines, levels, warnings} from results.json.

    `lines[0]` is the verdict; `levels` (same length) is "block", "caution" or "info" per line. `recommendation`
    is the variant to ship, None when a gate failed (`candidate` still names the variant the advice would pick).
    """
    variants: dict[str, dict] = results.get("variants") or {}
    metric = results.get("headline_metric") or "token_f1"
    label = LABELS.get(metric, metric)
    vals = {n: v.get(metric) for n, v in variants.items() if isinstance(v.get(metric), int | float)}
    gates = (results.get("gates") or {}).get("results") or []
    failed = [g for g in gates if not g["passed"]]
    blocking = [{"gate": g["text"], "path": g["path"], "value": g.get("value"), "op": g["op"],
                 "threshold": g["threshold"], "reason": g["reason"], "text": gate_text(g)} for g in failed]
    lines: list[str] = []
    levels: list[str] = []
    warnings: list[str] = []

    def say(line: str, level: str = "info") -> None:
        lines.append(line)
        levels.append(level)

    if failed:
        say(f"Do not ship: {len(failed)} gate{'s' if len(failed) > 1 else ''} failed ("
            + "; ".join(b["text"] for b in blocking) + ").", "block")
    if not vals:
        say(f"No variant has a {label} score; nothing to recommend.", "block" if not failed else "info")
        return {"ship": False, "recommendation": None, "candidate": None, "best": None, "metric": metric,
                "blocking": blocking, "worse_than_cheaper": [], "lines": lines, "levels": levels, "warnings": []}
    vb = results.get("vs_best") or {}
    best = vb.get("best") if vb.get("best") in vals else max(vals, key=vals.get)
    tests = vb.get("tests", {})
    ties = [n for n in vals if n != best and n in tests and not tests[n]["significant"]]
    candidates = sorted([best, *ties], key=_cost)
    choice = candidates[0]
    ship = not failed
    worse = worse_than_cheaper(variants, choice)
    ci = (variants[choice].get("ci") or {}).get(metric)
    ci_text = f" (95% CI {_pct(ci[0])}–{_pct(ci[1])})" if ci else ""
    n = results.get("n_examples")
    lead = f"Ship {choice}: " if ship else f"Candidate once the gates pass, {choice}: "
    if choice == best:
        pitch = f"{_pretty(choice)} has the best {label}, {_pct(vals[choice])}{ci_text} on {n} held-out examples."
    else:
        pitch = (f"{_pretty(choice)} scores {label} {_pct(vals[choice])}{ci_text}, not significantly below the best "
                 f"({best}, {_pct(vals[best])}; p = {tests[choice]['p_value']:.2g}), and it is the cheaper "
                 "adaptation.")
    if ship:
        say(lead + pitch)
    for w in worse:
        say(f"{choice} is worse than the cheaper {w['cheaper']} on {LABELS.get(w['metric'], w['metric'])}: "
            f"{w['value']:.2f} vs {w['cheaper_value']:.2f}.", "caution")
    if not ship:
        say(lead + pitch)
    for name in sorted(vals, key=_cost):
        if name in (best, choice) or vals[best] <= 0:
            continue
        share = vals[name] / vals[best]
        sig = tests.get(name)
        note = "" if sig is None else (
            " (significantly lower)" if sig["significant"] else " (difference not significant)")
        say(f"{_pretty(name)[0].upper() + _pretty(name)[1:]} reaches {share:.0%} of {best}'s {label}{note}.")
    # What fine-tuning adds on format compliance, prompting vs tuned.
    fmt = "json_compliance" if any(isinstance(v.get("json_compliance"), int | float) for v in variants.values()) \
        else ("accuracy" if metric != "accuracy" else None)
    if fmt and "tuned" in variants:
        prompt_side = [n for n in ("base_fewshot", "base") if isinstance(variants.get(n, {}).get(fmt), int | float)]
        if prompt_side and isinstance(variants["tuned"].get(fmt), int | float):
            p = prompt_side[0]
            comp = (results.get("ladder") or {}).get("comparisons", {}).get("tuned", {}).get(fmt)
            sig = "" if comp is None or p != "base" else (" (significant)" if comp["significant"] else
                                                          " (not significant)")
            say(f"Fine-tuning changes {LABELS.get(fmt, fmt)} {_pct(variants[p][fmt])} ({p}) → "
                f"{_pct(variants['tuned'][fmt])} (tuned){sig}.")
    # What constrained decoding adds over the same variant decoding freely.
    for name in variants:
        free = name[: -len(CONSTRAINED_SUFFIX)] if name.endswith(CONSTRAINED_SUFFIX) else None
        if free is None or free not in variants:
            continue
        parts = [f"{LABELS.get(m, m)} {_pct(_num(variants[free].get(m)))} → {_pct(_num(variants[name].get(m)))}"
                 for m in dict.fromkeys(("json_compliance", metric))
                 if _num(variants[free].get(m)) is not None and _num(variants[name].get(m)) is not None]
        if parts:
            say(f"Constrained decoding ({free} → {name}): " + ", ".join(parts) + ".")
    for name, reason in (results.get("skipped_variants") or {}).items():
        say(f"{name} was not evaluated: {reason}.")
    reg = results.get("regression") or {}
    if reg.get("status") == "ok" and isinstance(reg.get("drop"), int | float):
        worst = max(reg["categories"].items(), key=lambda kv: kv[1]["drop"]) if reg.get("categories") else None
        msg = (f"General ability: {_pct(reg['base'])} base → {_pct(reg['tuned'])} tuned on {reg['n_items']} "
               f"regression items")
        if worst and worst[1]["drop"] > 0:
            msg += f"; largest drop in {worst[0]} ({_pct(worst[1]['base'])} → {_pct(worst[1]['tuned'])})"
        if reg["drop"] > 0.05:
            warnings.append(msg + ".")
        else:
            say(msg + ".")
    rt = results.get("redteam") or {}
    if rt.get("status") == "ok":
        b, t = rt.get("base", {}), rt.get("tuned", {})
        msg = (f"Safety: refusal on harmful probes {_pct(b.get('refusal'))} base → {_pct(t.get('refusal'))} tuned; "
               f"over-refusal on benign {_pct(b.get('over_refusal'))} → {_pct(t.get('over_refusal'))}")
        if isinstance(t.get("refusal"), int | float) and t["refusal"] < 0.9:
            warnings.append(msg + "; add refusal examples to the training data.")
        else:
            say(msg + ".")
    jd = results.get("judge") or {}
    if jd.get("status") == "ok":
        for name, s in jd.get("variants", {}).items():
            if s.get("win_rate") is not None:
                say(f"Judge: {name} wins {_pct(s['win_rate'])}, ties {_pct(s['tie_rate'])}, loses "
                    f"{_pct(s['loss_rate'])} against base ({s['n_judged']} pairs, order agreement "
                    f"{_pct(s['agreement'])}).")
    if gates and not failed:
        say(f"All {len(gates)} gate(s) pass.")
    return {"ship": ship, "recommendation": choice if ship else None, "candidate": choice, "best": best,
            "metric": metric, "blocking": blocking, "worse_than_cheaper": worse, "lines": lines, "levels": levels,
            "warnings": warnings}
