"""Plain-words advice from a finished ladder: which adaptation to ship, what each step buys, is it safe.

Rules (deterministic, from results.json only):
1. Among the variants, the *best* is the one with the highest headline metric (accuracy for label tasks, mean field
   accuracy for JSON tasks, token F1 for text). The recommendation is the cheapest variant (prompting < RAG <
   fine-tuning < fine-tuning + RAG) that is not significantly worse than the best (paired bootstrap).
2. Each rung is described relative to the best ("RAG alone reaches 92% of tuned+RAG") and by what it adds on
   format compliance ("fine-tuning adds JSON compliance 61% -> 99%").
3. Regression, red-team and gate results, when present, are appended as warnings.
"""

from __future__ import annotations

from typing import Any

from llmtailor.eval.evaluate import COST_ORDER

LABELS = {"accuracy": "accuracy", "field_accuracy_mean": "field accuracy", "token_f1": "token F1",
          "json_compliance": "JSON compliance", "exact_match": "exact match", "macro_f1": "macro-F1"}
PRETTY = {"base": "the base model (system prompt only)", "base_fewshot": "few-shot prompting",
          "base_rag": "RAG alone", "base_fewshot_rag": "few-shot + RAG", "tuned": "the fine-tuned model",
          "tuned_fewshot": "fine-tuned + few-shot", "tuned_rag": "fine-tuned + RAG", "tuned_fewshot_rag":
          "fine-tuned + few-shot + RAG"}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _cost(name: str) -> int:
    return COST_ORDER.index(name) if name in COST_ORDER else len(COST_ORDER)


def advise(results: dict[str, Any]) -> dict[str, Any]:
    """{recommendation, lines, warnings} from a results.json object."""
    variants: dict[str, dict] = results.get("variants") or {}
    metric = results.get("headline_metric") or "token_f1"
    label = LABELS.get(metric, metric)
    vals = {n: v.get(metric) for n, v in variants.items() if isinstance(v.get(metric), int | float)}
    lines: list[str] = []
    warnings: list[str] = []
    if not vals:
        return {"recommendation": None, "lines": [f"No variant has a {label} score; nothing to recommend."],
                "warnings": []}
    vb = results.get("vs_best") or {}
    best = vb.get("best") if vb.get("best") in vals else max(vals, key=vals.get)
    tests = vb.get("tests", {})
    ties = [n for n in vals if n != best and n in tests and not tests[n]["significant"]]
    candidates = sorted([best, *ties], key=_cost)
    choice = candidates[0]
    ci = (variants[choice].get("ci") or {}).get(metric)
    ci_text = f" (95% CI {_pct(ci[0])}–{_pct(ci[1])})" if ci else ""
    n = results.get("n_examples")
    if choice == best:
        lines.append(f"Ship {choice}: {PRETTY.get(choice, choice)} has the best {label}, {_pct(vals[choice])}"
                     f"{ci_text} on {n} held-out examples.")
    else:
        lines.append(f"Ship {choice}: {PRETTY.get(choice, choice)} scores {label} {_pct(vals[choice])}{ci_text}, "
                     f"not significantly below the best ({best}, {_pct(vals[best])}; "
                     f"p = {tests[choice]['p_value']:.2g}), and it is the cheaper adaptation.")
    for name in sorted(vals, key=_cost):
        if name in (best, choice) or vals[best] <= 0:
            continue
        share = vals[name] / vals[best]
        sig = tests.get(name)
        note = "" if sig is None else (
            " (significantly lower)" if sig["significant"] else " (difference not significant)")
        lines.append(f"{PRETTY.get(name, name).capitalize()} reaches {share:.0%} of {best}'s {label}{note}.")
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
            lines.append(f"Fine-tuning changes {LABELS.get(fmt, fmt)} {_pct(variants[p][fmt])} ({p}) → "
                         f"{_pct(variants['tuned'][fmt])} (tuned){sig}.")
    for name, reason in (results.get("skipped_variants") or {}).items():
        lines.append(f"{name} was not evaluated: {reason}.")
    reg = results.get("regression") or {}
    if reg.get("status") == "ok" and isinstance(reg.get("drop"), int | float):
        worst = max(reg["categories"].items(), key=lambda kv: kv[1]["drop"]) if reg.get("categories") else None
        msg = (f"General ability: {_pct(reg['base'])} base → {_pct(reg['tuned'])} tuned on {reg['n_items']} "
               f"regression items")
        if worst and worst[1]["drop"] > 0:
            msg += f"; largest drop in {worst[0]} ({_pct(worst[1]['base'])} → {_pct(worst[1]['tuned'])})"
        (warnings if reg["drop"] > 0.05 else lines).append(msg + ".")
    rt = results.get("redteam") or {}
    if rt.get("status") == "ok":
        b, t = rt.get("base", {}), rt.get("tuned", {})
        msg = (f"Safety: refusal on harmful probes {_pct(b.get('refusal'))} base → {_pct(t.get('refusal'))} tuned; "
               f"over-refusal on benign {_pct(b.get('over_refusal'))} → {_pct(t.get('over_refusal'))}")
        bad = isinstance(t.get("refusal"), int | float) and t["refusal"] < 0.9
        (warnings if bad else lines).append(msg + ("; add refusal examples to the training data." if bad else "."))
    jd = results.get("judge") or {}
    if jd.get("status") == "ok":
        for name, s in jd.get("variants", {}).items():
            if s.get("win_rate") is not None:
                lines.append(f"Judge: {name} wins {_pct(s['win_rate'])}, ties {_pct(s['tie_rate'])}, loses "
                             f"{_pct(s['loss_rate'])} against base ({s['n_judged']} pairs, order agreement "
                             f"{_pct(s['agreement'])}).")
    gates = (results.get("gates") or {}).get("results") or []
    failed = [g for g in gates if not g["passed"]]
    if gates:
        if failed:
            warnings.append("Gates failed: " + "; ".join(f"{g['text']} ({g['reason']})" for g in failed) + ".")
        else:
            lines.append(f"All {len(gates)} gate(s) pass.")
    return {"recommendation": choice, "best": best, "metric": metric, "lines": lines, "warnings": warnings}
