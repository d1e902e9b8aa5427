"""Label tasks (intent classification, routing): map free text to a label, then accuracy, macro-F1, confusion.

A small model rarely answers with the bare label, so a prediction is mapped to a label in three steps: the whole
normalised answer equals a label; else its first line does; else exactly one label occurs in it as whole words.
Anything else is *unscorable*: counted, shown in the confusion matrix as "(none)", and wrong for accuracy, so the
metric is never NaN and never flattered by dropping rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmtailor.eval.metrics import _strict_json_object, normalize_text

NONE_LABEL = "(none)"
_SEP = re.compile(r"[\s_\-]+")


def label_key(text: str | None) -> str:
    """Comparable form: lowercase, punctuation trimmed, underscores/hyphens/whitespace as one space."""
    return _SEP.sub(" ", normalize_text(text or "")).strip()


def detect_task(refs: Sequence[str | None], has_schema: bool) -> str:
    """json when a schema is set or most references are JSON objects; label when references are a small set of
    short strings that repeat; else text."""
    present = [r for r in refs if isinstance(r, str) and r.strip()]
    if has_schema:
        return "json"
    if not present:
        return "text"
    if sum(_strict_json_object(r) is not None for r in present) >= 0.5 * len(present):
        return "json"
    short = all(len(r.split()) <= 4 and len(r) <= 60 for r in present)
    distinct = {label_key(r) for r in present}
    if short and len(distinct) <= max(2, int(0.6 * len(present))) and len(distinct) <= 200:
        return "label"
    return "text"


def map_label(pred: str | None, labels: Sequence[str]) -> str | None:
    """The label a prediction names, or None when it names none or several."""
    keys = {label_key(lab): lab for lab in labels}
    whole = label_key(pred)
    if whole in keys:
        return keys[whole]
    first = label_key((pred or "").strip().splitlines()[0] if (pred or "").strip() else "")
    if first in keys:
        return keys[first]
    padded = f" {whole} "
    found = [lab for k, lab in keys.items() if k and f" {k} " in padded]
    # A longer label containing a shorter one ("card arrival" vs "card") counts once: keep the longest matches.
    found = [lab for lab in found if not any(lab != o and label_key(lab) in label_key(o) for o in found)]
    return found[0] if len(found) == 1 else None


def label_metrics(preds: Sequence[str], refs: Sequence[str | None], labels: Sequence[str]) -> tuple[dict, list[dict]]:
    """Accuracy, macro-F1 (over labels present in references or predictions), confusion matrix, unscorable count.

    Rows without a reference are skipped and counted. Per row: {label_pred, label_correct}.
    """
    labels = list(dict.fromkeys(labels))
    keys = {label_key(lab): lab for lab in labels}
    rows: list[dict] = []
    gold: list[str] = []
    pred_labels: list[str] = []
    skipped = 0
    for pred, ref in zip(preds, refs, strict=True):
        if not isinstance(ref, str) or not ref.strip():
            skipped += 1
            rows.append({})
            continue
        ref_label = keys.get(label_key(ref), ref.strip())
        if ref_label not in labels:
            labels.append(ref_label)
            keys[label_key(ref_label)] = ref_label
        got = map_label(pred, labels)
        rows.append({"label_pred": got if got is not None else NONE_LABEL, "label_gold": ref_label,
                     "label_correct": float(got == ref_label)})
        gold.append(ref_label)
        pred_labels.append(got if got is not None else NONE_LABEL)
    agg = label_aggregate(gold, pred_labels, labels)
    agg["label_skipped"] = skipped
    return agg, rows


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Unweighted mean F1 over the labels that occur in gold or predictions ("(none)" excluded as a class)."""
    classes = sorted((set(gold) | set(pred)) - {NONE_LABEL})
    if not classes:
        return 0.0
    f1s = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, pred, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, pred, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, pred, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def label_aggregate(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """accuracy, macro_f1, unscorable counts and the confusion matrix (rows gold, columns predicted)."""
    n = len(gold)
    used = [lab for lab in labels if lab in set(gold) | set(pred)]
    cols = used + ([NONE_LABEL] if NONE_LABEL in pred else [])
    index = {lab: i for i, lab in enumerate(cols)}
    matrix = [[0] * len(cols) for _ in used]
    row_index = {lab: i for i, lab in enumerate(used)}
    for g, p in zip(gold, pred, strict=True):
        matrix[row_index[g]][index[p]] += 1
    unscorable = sum(p == NONE_LABEL for p in pred)
    return {
        "accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / n if n else None,
        "macro_f1": macro_f1(gold, pred) if n else None,
        "unscorable": unscorable,
        "unscorable_rate": unscorable / n if n else None,
        "confusion_matrix": {"labels": used, "columns": cols, "matrix": matrix},
    }
