"""Faithfulness checker quality: does it catch unsupported sentences (negation, changed numbers and dates, swapped
names) without rejecting supported paraphrases?

Labelled pairs: tests/data/faithfulness_pairs.json (hand-written sentence/passage pairs, 'supported' or
'unsupported', with the hard case each tests). Two scorers, both offline and deterministic, so one run is the
result (no seeds, no sampling, no model):

* old: word overlap only (`grounding.lexical_support` >= 0.6), the scorer before `llmtailor.eval.claims`;
* new: `claims.check` (overlap plus the number, date, negation, opposite-word and name rules), which is what
  `grounding.support` / `supported` use now.

The positive class is *unsupported*: precision = flagged sentences that really are unsupported, recall =
unsupported sentences that were flagged. Reported per split: 'dev' (the rules were built on it), 'holdout'
(measured once when the first rules were frozen, then used for a few general fixes), 'fresh' (written after the
final rules and never used to change them: the figure to trust for new text).

Usage: python bench/faithfulness.py [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmtailor.eval.claims import check  # noqa: E402
from llmtailor.eval.grounding import SUPPORT, lexical_support  # noqa: E402

DATA = ROOT / "tests" / "data" / "faithfulness_pairs.json"
SPLITS = ("dev", "holdout", "fresh")
# Measured on the 'holdout' split when the first version of the rules was frozen, before the fixes it prompted
# (rates such as "per month", month ranges, weekday/weekend, "another one", superlative/compass/frequency opposites).
# Not reproducible from this tree; kept as the record of that measurement.
HOLDOUT_AT_FREEZE = {"tp": 19, "fp": 2, "fn": 12, "tn": 28, "precision": 0.905, "recall": 0.613, "f1": 0.731}


def load(path: Path = DATA) -> tuple[dict[str, str], list[dict]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["passages"], data["pairs"]


def old_flags(sentence: str, passage: str) -> tuple[bool, str | None]:
    return lexical_support(sentence, passage) < SUPPORT, None


def new_flags(sentence: str, passage: str) -> tuple[bool, str | None]:
    v = check(sentence, passage)
    return not v.supported, v.reason


def scores(rows: list[tuple[bool, bool]]) -> dict:
    """(flagged, truly unsupported) pairs -> confusion counts, precision, recall, F1 of unsupported detection."""
    tp = sum(f and u for f, u in rows)
    fp = sum(f and not u for f, u in rows)
    fn = sum(u and not f for f, u in rows)
    tn = sum(not f and not u for f, u in rows)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"n": len(rows), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": round(p, 3), "recall": round(r, 3),
            "f1": round(f1, 3)}


def run() -> dict:
    passages, pairs = load()
    out: dict = {"data": str(DATA.relative_to(ROOT)), "n_pairs": len(pairs),
                 "labels": {lab: sum(p["label"] == lab for p in pairs) for lab in ("supported", "unsupported")},
                 "positive_class": "unsupported", "deterministic": True, "scorers": {}}
    for name, fn in (("old (word overlap)", old_flags), ("new (claims.check)", new_flags)):
        t0 = time.perf_counter()
        verdicts = []
        for p in pairs:
            flagged, reason = fn(p["sentence"], passages[p["passage"]])
            verdicts.append((p, flagged, reason))
        elapsed = time.perf_counter() - t0
        by_split = {s: scores([(f, p["label"] == "unsupported") for p, f, _ in verdicts if p["split"] == s])
                    for s in SPLITS}
        by_kind: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
        for p, f, _ in verdicts:
            by_kind[p["kind"]].append((f, p["label"] == "unsupported"))
        out["scorers"][name] = {
            "all": scores([(f, p["label"] == "unsupported") for p, f, _ in verdicts]),
            "splits": by_split,
            # per kind: share of its pairs judged right (flagged when unsupported, passed when supported)
            "kinds": {k: {"n": len(v), "correct": sum(f == u for f, u in v)} for k, v in sorted(by_kind.items())},
            "errors": [{"id": p["id"], "kind": p["kind"], "label": p["label"], "sentence": p["sentence"],
                        "reason": r} for p, f, r in verdicts if f != (p["label"] == "unsupported")],
            "seconds": round(elapsed, 3),
        }
    out["holdout_at_first_freeze"] = HOLDOUT_AT_FREEZE
    out["machine"] = f"{platform.machine()}, Python {platform.python_version()}"
    return out


def markdown(res: dict) -> str:
    old, new = res["scorers"]["old (word overlap)"], res["scorers"]["new (claims.check)"]
    lines = [
        "# Faithfulness checker: catching unsupported sentences",
        "",
        f"Labelled set: `{res['data']}`, {res['n_pairs']} hand-written sentence/passage pairs "
        f"({res['labels']['supported']} supported, {res['labels']['unsupported']} unsupported). Positive class: "
        "**unsupported**; precision = flagged sentences that are unsupported, recall = unsupported sentences "
        "flagged. Both scorers are deterministic and offline (no model, no sampling), so one run is the result.",
        "",
        "Produced by:",
        "",
        "```bash",
        "python bench/faithfulness.py",
        "```",
        "",
        "| split | pairs | scorer | precision | recall | F1 | TP | FP | FN | TN |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in (*SPLITS, "all"):
        for label, sc in (("old: word overlap", old), ("new: claims.check", new)):
            s = sc["all"] if split == "all" else sc["splits"][split]
            lines.append(f"| {split} | {s['n']} | {label} | {s['precision']:.3f} | {s['recall']:.3f} | "
                         f"{s['f1']:.3f} | {s['tp']} | {s['fp']} | {s['fn']} | {s['tn']} |")
    h = res["holdout_at_first_freeze"]
    lines += [
        "",
        "How to read the splits: **dev** pairs were written first and the rules were built on them (optimistic). "
        "**holdout** pairs were written after a first version of the rules was frozen; measured then, that "
        f"version scored precision {h['precision']:.3f}, recall {h['recall']:.3f}, F1 {h['f1']:.3f} "
        f"(TP {h['tp']}, FP {h['fp']}, FN {h['fn']}, TN {h['tn']}); its misses prompted a few general fixes, so the "
        "holdout row above is no longer unseen. **fresh** pairs were written after the final rules and never used "
        "to change them: that row is the estimate for new text, on a small sample "
        f"({new['splits']['fresh']['n']} pairs).",
        "",
        "Correct judgements per kind of pair (new scorer vs old):",
        "",
        "| kind | pairs | old correct | new correct |",
        "|---|---|---|---|",
    ]
    for kind, k in new["kinds"].items():
        lines.append(f"| {kind} | {k['n']} | {old['kinds'][kind]['correct']} | {k['correct']} |")
    lines += ["", "Errors of the new scorer (what rules cannot see):", "",
              "| id | kind | label | sentence | reason given |", "|---|---|---|---|---|"]
    for e in new["errors"]:
        lines.append(f"| {e['id']} | {e['kind']} | {e['label']} | {e['sentence']} | {e['reason'] or '-'} |")
    lines += [
        "",
        f"Time: old {old['seconds']:.2f} s, new {new['seconds']:.2f} s for all {res['n_pairs']} pairs "
        f"({res['machine']}; a shared 2-core machine, so only the order of magnitude means anything).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    res = run()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faithfulness.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (args.out / "faithfulness.md").write_text(markdown(res), encoding="utf-8")
    for name, sc in res["scorers"].items():
        print(name, "all:", sc["all"], "fresh:", sc["splits"]["fresh"])


if __name__ == "__main__":
    main()
