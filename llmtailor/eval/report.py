"""The run report: one self-contained HTML file (inline CSS, base64 PNG plots, no network needed).

`write_report(run_dir)` reads what the stages left in a run folder (run.json, config.yaml, metrics.jsonl,
the dataset card, eval/results.json, eval/examples.jsonl) and renders every section it can; a part that
is missing or unreadable becomes a short note in its section instead of an error.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.eval import plots
from llmtailor.io import write_text

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "assets" / "report"
TEMPLATE_NAME = "report.html.j2"
MAX_CELL_CHARS = 2000

_RUN_KEYS = [
    "run_id",
    "created",
    "status",
    "base_model",
    "method",
    "dataset_hash",
    "dataset_dir",
    "final_loss",
    "train_runtime_s",
    "train_tokens_per_s",
    "steps",
]
_METRIC_LABELS = {
    "eval_loss": "Eval loss",
    "perplexity": "Perplexity",
    "exact_match": "Exact match",
    "token_f1": "Token F1",
    "rouge_l": "ROUGE-L",
    "bleu": "BLEU",
    "json_parse_rate": "JSON parses",
    "json_compliance": "JSON schema-valid",
    "json_extra_text_rate": "JSON with extra text",
    "answer_length_tokens": "Answer length (words)",
    "generation_s": "Generation time (s)",
    "examples_per_s": "Examples / s",
    "eval_tokens": "Eval tokens",
    "accuracy": "Accuracy",
    "macro_f1": "Macro-F1",
    "field_accuracy_mean": "Field accuracy (mean)",
    "unscorable_rate": "Unscorable answers",
    "truncated_rate": "Hit max tokens",
    "faithfulness": "Faithfulness",
    "answer_relevance": "Answer relevance",
    "context_precision": "Context precision",
    "context_recall": "Context recall",
    "citation_correctness": "Citation correctness",
    "cite_rate": "Answers citing a passage",
    "abstain_rate": "Said \"I don't know\" (RAG)",
}
_METRIC_ORDER = list(_METRIC_LABELS)
_LOWER_IS_BETTER = {"eval_loss", "perplexity", "json_extra_text_rate", "generation_s", "unscorable_rate",
                    "truncated_rate"}
_NO_BEST = {"answer_length_tokens", "n", "eval_tokens", "unscorable", "truncated", "label_skipped", "abstained",
            "abstain_rate", "invalid_citation_rows"}
_TAIL_METRICS = {"answer_length_tokens", "generation_s", "examples_per_s", "eval_tokens", "unscorable",
                 "truncated", "label_skipped", "truncated_rate", "unscorable_rate", "abstained", "abstain_rate",
                 "invalid_citation_rows"}
_GROUNDING = ("faithfulness", "answer_relevance", "context_precision", "context_recall", "citation_correctness")
_SUMMARY_SKIP = {"eval_summary"}  # shown in full in the metrics section
_CHART_METRICS = ["exact_match", "token_f1", "rouge_l", "bleu", "json_parse_rate", "json_compliance"]


# --------------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(object, None), or (None, note) when the file is missing or unreadable."""
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} could not be read ({e})"


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Objects of a JSONL file, skipping bad lines (e.g. a truncated last line); returns (rows, bad lines)."""
    rows, bad = [], 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
    return rows, bad


def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _fmt(value: Any, key: str = "") -> str:
    """Human-readable value for tables."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        if key.endswith("runtime_s") or key.endswith("runtime"):
            minutes, seconds = divmod(int(round(value)), 60)
            text = f"{value:,.1f} s" + (f" ({minutes} min {seconds:02d} s)" if minutes else "")
        return text
    if isinstance(value, (dict, list)):
        return _clip(json.dumps(value, ensure_ascii=False, default=str), 300)
    return str(value)


def _fmt_metric(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key == "eval_loss":
        return f"{value:.4f}"
    if key == "perplexity":
        return f"{value:,.2f}"
    if key in ("answer_length_tokens", "generation_s"):
        return f"{value:,.1f}"
    if key == "eval_tokens":
        return f"{value:,.0f}"
    if key in _METRIC_LABELS or key.startswith("field_accuracy."):
        return f"{value:.3f}"
    return f"{value:.4g}"


def _clip(text: str, limit: int = MAX_CELL_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit:,} more characters)"


def _as_text(x: Any) -> str:
    if x is None:
        return ""
    return x if isinstance(x, str) else json.dumps(x, ensure_ascii=False, default=str)


def _format_date(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not value:
        return "—"
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    zone = " UTC" if parsed.utcoffset() == dt.timedelta(0) else (parsed.strftime(" %z") if parsed.tzinfo else "")
    return parsed.strftime("%Y-%m-%d %H:%M") + zone


def _status_class(status: Any) -> str:
    s = str(status or "").lower()
    if s in {"completed", "complete", "done", "succeeded", "success", "finished", "evaluated", "trained"}:
        return "ok"
    if s in {"failed", "error", "crashed", "killed"}:
        return "bad"
    if s in {"running", "training", "evaluating", "started", "interrupted"}:
        return "warn"
    return "neutral"


# --------------------------------------------------------------------------- sections


def _summary(run: dict) -> list[tuple[str, str]]:
    keys = [k for k in _RUN_KEYS if k in run] + [k for k in run if k not in _RUN_KEYS and k not in _SUMMARY_SKIP]
    return [(k, _format_date(run[k]) if k == "created" else _fmt(run[k], k)) for k in keys]


def _find_card(run_dir: Path, run: dict) -> Path | None:
    candidates = []
    if run.get("dataset_dir"):
        d = Path(str(run["dataset_dir"]))
        candidates += [d] if d.is_absolute() else [d, run_dir / d, run_dir.parent.parent / d, run_dir.parent / d]
    candidates.append(run_dir)
    for c in candidates:
        if (c / "card.json").is_file():
            return c / "card.json"
    return None


def _data_section(run_dir: Path, run: dict) -> dict:
    path = _find_card(run_dir, run)
    if path is None:
        where = f" in {run['dataset_dir']}" if run.get("dataset_dir") else ""
        return {"note": f"No dataset card found{where}."}
    card, err = _read_json(path)
    if not isinstance(card, dict):
        return {"note": err or f"{path}: not a JSON object"}
    notes = []
    if card.get("hash") and run.get("dataset_hash") and card["hash"] != run["dataset_hash"]:
        notes.append(f"The card's hash ({card['hash']}) differs from the run's dataset hash ({run['dataset_hash']}).")
    dropped = {str(k): v for k, v in _d(card.get("dropped")).items()}
    rows_in = _num(card.get("rows_in"))
    counts = [
        (label, _fmt(card.get(key)))
        for label, key in [
            ("rows in", "rows_in"),
            ("rows kept", "rows_kept"),
            ("train rows", "train_rows"),
            ("eval rows", "eval_rows"),
        ]
        if key in card
    ]
    if dropped:
        counts.insert(2, ("rows dropped", _fmt(sum(v for v in dropped.values() if isinstance(v, int)))))
    dropped_rows = [
        (reason, _fmt(n), f"{100 * n / rows_in:.1f}%" if rows_in and _num(n) is not None else "—")
        for reason, n in sorted(dropped.items(), key=lambda kv: -(_num(kv[1]) or 0))
    ]
    pii_rows = [(str(k), _fmt(v)) for k, v in sorted(_d(card.get("pii_counts")).items(), key=lambda kv: str(kv[0]))]
    sources = [
        (_as_text(s.get("name")), _as_text(s.get("path")), _fmt(s.get("rows")))
        for s in (card.get("sources") if isinstance(card.get("sources"), list) else [])
        if isinstance(s, dict)
    ]
    lengths = _d(card.get("token_lengths"))
    length_stats = [(k, _fmt(lengths[k])) for k in ("min", "mean", "p50", "p95", "max") if k in lengths]
    hist = _d(lengths.get("histogram"))
    edges, hcounts = hist.get("edges"), hist.get("counts")
    hist_png = None
    if isinstance(edges, list) and isinstance(hcounts, list):
        markers = {k: lengths[k] for k in ("p50", "p95") if _num(lengths.get(k)) is not None}
        hist_png = plots.token_histogram_png(edges, hcounts, markers)
    known = {
        "hash",
        "rows_in",
        "rows_kept",
        "dropped",
        "pii_counts",
        "train_rows",
        "eval_rows",
        "token_lengths",
        "sources",
        "eval_split",  # shown in the leakage part
        "leakage",
    }
    other = [(str(k), _fmt(v, str(k))) for k, v in card.items() if k not in known]
    return {
        "note": None,
        "path": str(path),
        "hash": card.get("hash"),
        "counts": counts,
        "dropped": dropped_rows,
        "pii": pii_rows,
        "sources": sources,
        "length_stats": length_stats,
        "hist_png": hist_png,
        "other": other,
        "notes": notes,
    }


def _leakage_section(run_dir: Path, run: dict, results: dict) -> dict | None:
    """Where the eval split came from and which eval rows also occur in train: from results.json, else the card."""
    leak, split = _d(_d(results.get("data")).get("leakage")), _d(_d(results.get("data")).get("eval_split"))
    if not leak:
        path = _find_card(run_dir, run)
        card = _d(_read_json(path)[0]) if path else {}
        leak, split = _d(card.get("leakage")), _d(card.get("eval_split"))
    count = _num(leak.get("count"))
    if count is None:
        return None
    dropped = leak.get("dropped_from_train") if leak.get("policy") == "drop_from_train" else None
    summary = (
        f"Eval split: {_as_text(split.get('description') or 'origin not recorded')}. "
        f"{int(count)} of {_fmt(leak.get('eval_rows'))} eval rows also occur in the training data "
        f"({_fmt(leak.get('exact'))} exact, {_fmt(leak.get('near'))} near duplicates)"
        + (f"; {_fmt(dropped)} training copies were dropped." if dropped is not None else ".")
    )

    def where(side: Any) -> str:
        side = _d(side)
        return f"{Path(str(side.get('file') or '?')).name}:{side.get('line', '?')}"

    rows = [
        {"test": where(r.get("test")), "train": where(r.get("train")),
         "match": f"{_as_text(r.get('kind'))} ({_fmt(r.get('similarity'))})",
         "test_text": _clip(_as_text(_d(r.get("test")).get("text"))),
         "train_text": _clip(_as_text(_d(r.get("train")).get("text")))}
        for r in (leak.get("rows") if isinstance(leak.get("rows"), list) else []) if isinstance(r, dict)
    ]
    more = f"First {len(rows)} of {int(count)} listed." if rows and count > len(rows) else None
    return {"summary": summary, "count": int(count), "rows": rows, "more": more}


def _training_section(run_dir: Path, run: dict) -> dict:
    path = run_dir / "metrics.jsonl"
    lines, bad = _read_jsonl(path) if path.is_file() else ([], 0)
    if not lines and run.get("final_loss") is None:
        return {"note": "Training not run yet (no metrics.jsonl in this run folder)."}
    train_pts, eval_pts, summary = [], [], {}
    for i, row in enumerate(lines):
        step = _num(row.get("step"))
        step = float(i) if step is None else step
        if _num(row.get("loss")) is not None:
            train_pts.append((step, float(row["loss"])))
        if _num(row.get("eval_loss")) is not None:
            eval_pts.append((step, float(row["eval_loss"])))
        if "train_loss" in row or "train_runtime" in row:
            summary = row
    steps = run.get("steps") or (int(max(s for s, _ in train_pts + eval_pts)) if train_pts or eval_pts else None)
    epochs = [e for e in (_num(r.get("epoch")) for r in lines) if e is not None]
    stats = [
        ("final loss", _fmt(run.get("final_loss", train_pts[-1][1] if train_pts else None))),
        ("mean train loss", _fmt(summary.get("train_loss"))),
        ("last eval loss", _fmt(eval_pts[-1][1] if eval_pts else None)),
        ("steps", _fmt(steps)),
        ("epochs", _fmt(max(epochs) if epochs else None)),
        ("runtime", _fmt(run.get("train_runtime_s", summary.get("train_runtime")), "train_runtime_s")),
        ("tokens / s", _fmt(run.get("train_tokens_per_s"))),
    ]
    notes = [f"{bad} unreadable line(s) in metrics.jsonl skipped (e.g. a run still writing)."] if bad else []
    return {
        "note": None,
        "stats": [s for s in stats if s[1] != "—"],
        "notes": notes,
        "loss_png": plots.loss_curve_png(train_pts, eval_pts),
    }


def _metric_rows(variants: dict[str, dict]) -> list[tuple[str, str, dict[str, float | None]]]:
    """Rows of (key, label, {variant: value}): quality metrics, per-field accuracy, then length and speed."""
    keys: list[str] = []
    fields: list[str] = []
    for v in variants.values():
        for k, x in v.items():
            if k == "field_accuracy" and isinstance(x, dict):
                fields += [str(f) for f in x if str(f) not in fields]
            elif k not in keys and k != "n" and _num(x) is not None:
                keys.append(k)
    quality = [k for k in _METRIC_ORDER if k in keys and k not in _TAIL_METRICS]
    tail = [k for k in _METRIC_ORDER if k in keys and k in _TAIL_METRICS]
    extra = [k for k in keys if k not in _METRIC_ORDER]

    def row(k: str) -> tuple[str, str, dict[str, float | None]]:
        return k, _METRIC_LABELS.get(k, k), {n: _num(v.get(k)) for n, v in variants.items()}

    fields_rows = [
        (
            f"field_accuracy.{f}",
            f"Field accuracy · {f}",
            {n: _num(_d(v.get("field_accuracy")).get(f)) for n, v in variants.items()},
        )
        for f in fields
    ]
    return [row(k) for k in quality] + fields_rows + [row(k) for k in tail + extra]


def _eval_section(run_dir: Path) -> dict:
    results, err = _read_json(run_dir / "eval" / "results.json")
    if err:
        return {"note": err}
    variants = {str(k): v for k, v in _d(_d(results).get("variants")).items() if isinstance(v, dict)}
    if not variants:
        return {"note": "Evaluation not run yet (no eval/results.json in this run folder)."}
    names = list(variants)
    ref = "base" if "base" in variants else names[0]
    others = [n for n in names if n != ref]
    rows = _metric_rows(variants)
    table = []
    for key, label, values in rows:
        direction = None if key in _NO_BEST else (-1 if key in _LOWER_IS_BETTER else 1)
        present = [v for v in values.values() if v is not None]
        best = (
            (max(present) if direction == 1 else min(present)) if present and direction and len(present) > 1 else None
        )
        cells = [{"text": _fmt_metric(key, values[n]), "best": best is not None and values[n] == best} for n in names]
        deltas = []
        for n in others:
            a, b = values[ref], values[n]
            if a is None or b is None:
                deltas.append({"text": "—", "cls": ""})
                continue
            d = b - a
            cls = "" if direction is None or abs(d) < 1e-12 else ("good" if d * direction > 0 else "bad")
            deltas.append({"text": ("+" if d >= 0 else "−") + _fmt_metric(key, abs(d)), "cls": cls})
        table.append(
            {
                "key": key,
                "label": label,
                "cells": cells,
                "deltas": deltas,
                "hint": "lower is better" if direction == -1 else "",
            }
        )
    chart_keys = [k for k in _CHART_METRICS if any(_num(v.get(k)) is not None for v in variants.values())]
    chart_vals = {n: [_num(variants[n].get(k)) for k in chart_keys] for n in names}
    field_means = {n: list(_d(variants[n].get("field_accuracy")).values()) for n in names}
    if any(field_means.values()):
        chart_keys.append("Field accuracy (mean)")
        for n in names:
            vals = [x for x in field_means[n] if _num(x) is not None]
            chart_vals[n].append(sum(vals) / len(vals) if vals else None)
    labels = [_METRIC_LABELS.get(k, k) for k in chart_keys]
    skipped = {n: {k: c for k, c in _d(variants[n].get("skipped")).items() if c} for n in names}
    differ = len({json.dumps(v, sort_keys=True) for v in skipped.values()}) > 1
    notes = []
    for n in names if differ else names[:1]:
        if skipped[n]:
            counts = ", ".join(
                f"{_METRIC_LABELS.get(k, k.replace('_', ' '))} ({c} row{'s' if c != 1 else ''})"
                for k, c in skipped[n].items()
            )
            notes.append(f"{n + ': ' if differ else ''}Rows without a reference are left out of: {counts}.")
    notes += _grounding_notes(variants)
    info = [("examples", _fmt(results.get("n_examples"))), ("JSON schema", _fmt(results.get("schema")))]
    info += [(f"generation · {k}", _fmt(v)) for k, v in _d(results.get("generation")).items()]
    return {
        "note": None,
        "names": names,
        "ref": ref,
        "others": others,
        "table": table,
        "info": info,
        "notes": notes,
        "bars_png": plots.metric_bars_png(labels, chart_vals),
        "colors": {n: plots.variant_color(n, i) for i, n in enumerate(names)},
    }


def _grounding_notes(variants: dict[str, dict]) -> list[str]:
    """Per RAG variant: rows each grounding metric could not score (no passages, no reference, no citation...)."""
    notes = []
    for n, v in variants.items():
        counts = {k: c for k, c in _d(v.get("grounding_unscorable")).items() if c}
        if counts:
            text = ", ".join(f"{_METRIC_LABELS.get(k, k)} ({c} row{'s' if c != 1 else ''})" for k, c in counts.items())
            notes.append(f"{n}: not scorable (no passage, reference, citation, or the assistant abstained): {text}.")
    return notes


def _rag_badges(scores: dict) -> list[dict]:
    """Grounding of one RAG answer: abstained, cited passages, invalid citations, faithfulness."""
    if scores.get("abstained"):
        return [{"text": "I don't know (nothing relevant)", "cls": "neutral"}]
    badges = []
    cited, invalid = scores.get("cited"), scores.get("invalid_citations")
    if isinstance(cited, list):
        text = "cites " + "".join(f"[{n}]" for n in cited) if cited else "no citation"
        badges.append({"text": text, "cls": "ok" if cited else "warn"})
    if invalid:
        badges.append({"text": "invalid " + "".join(f"[{n}]" for n in invalid), "cls": "bad"})
    for key, short in (("faithfulness", "faithful"), ("citation_correctness", "citations ok")):
        if _num(scores.get(key)) is not None:
            badges.append({"text": f"{short} {scores[key]:.2f}", "cls": "neutral"})
    return badges


def _badges(scores: dict) -> tuple[str, list[dict]]:
    """Row class (pass / partial / fail) and badges; "hit max tokens" and grounding show on failures too."""
    em, valid = scores.get("exact_match"), scores.get("json_valid")
    badges = []
    if _num(em) is not None:
        badges.append({"text": "exact ✓" if em >= 1 else "exact ✗", "cls": "ok" if em >= 1 else "bad"})
    if isinstance(valid, bool):
        badges.append({"text": "JSON ✓" if valid else "JSON ✗", "cls": "ok" if valid else "bad"})
    if _num(scores.get("token_f1")) is not None:
        badges.append({"text": f"F1 {scores['token_f1']:.2f}", "cls": "neutral"})
    lab = _num(scores.get("label_correct"))
    if lab is not None:
        badges.append({"text": f"label {scores.get('label_pred')}", "cls": "ok" if lab >= 1 else "bad"})
    if scores.get("truncated"):
        badges.append({"text": "hit max tokens", "cls": "warn"})
    badges += _rag_badges(scores)
    if lab is not None and lab < 1:
        cls = "fail"
    elif _num(em) is not None and em >= 1:
        cls = "pass"
    elif valid is True:
        cls = "partial"
    elif _num(em) is not None or valid is False:
        cls = "fail"
    else:
        cls = ""
    return cls, badges


def _passages(raw: Any) -> list[dict]:
    """`[1] handbook.pdf, p. 2, Expenses (similarity 0.61)` plus the text, for the passages a RAG prompt showed."""
    out = []
    for p in raw if isinstance(raw, list) else []:
        if not isinstance(p, dict):
            continue
        where = ", ".join(str(x) for x in (Path(str(p.get("source") or "?")).name,
                                           f"p. {p['page']}" if p.get("page") else None, p.get("section")) if x)
        sim = _num(p.get("similarity"))
        out.append({"label": f"[{p.get('number', len(out) + 1)}] {where}" + (f" (similarity {sim:.2f})"
                                                                             if sim is not None else ""),
                    "text": _clip(_as_text(p.get("text")), 600)})
    return out


def _examples_section(run_dir: Path, names: list[str], sample_size: int) -> dict:
    path = run_dir / "eval" / "examples.jsonl"
    if not path.is_file():
        return {"note": "No per-example outputs yet (eval/examples.jsonl)."}
    rows, bad = _read_jsonl(path)
    if not rows:
        return {"note": "eval/examples.jsonl holds no readable examples."}
    if not names:
        names = list(_d(rows[0].get("outputs")))
    shown = rows[: max(0, sample_size)]
    out = []
    for i, r in enumerate(shown, start=1):
        outputs, scores = _d(r.get("outputs")), _d(r.get("scores"))
        cells = []
        for n in names:
            cls, badges = _badges(_d(scores.get(n)))
            text = outputs.get(n)
            cells.append({"text": _clip(_as_text(text)) if text is not None else None, "cls": cls, "badges": badges})
        fails = [n for n in names if _badges(_d(scores.get(n)))[0] == "fail"]
        out.append(
            {
                "fails": " ".join(fails),
                "id": _as_text(r.get("id", i)),
                "prompt": _clip(_as_text(r.get("prompt"))),
                "reference": _clip(_as_text(r.get("reference"))) or None,
                "passages": _passages(r.get("passages")),
                "cells": cells,
            }
        )
    notes = [f"{bad} unreadable line(s) in examples.jsonl skipped."] if bad else []
    return {
        "note": None if out else "Sample size is 0: no examples shown.",
        "names": names,
        "rows": out,
        "shown": len(out),
        "total": len(rows),
        "notes": notes,
    }


# --------------------------------------------------------------------------- ladder, safety, judge


def _pct(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{100 * v:.0f}%"


def ranking_text(order: list[str], values: dict[str, Any]) -> str:
    """`tuned > base = base_fewshot`: equal scores are shown as ties, not as an order the data does not support."""
    parts: list[str] = []
    prev: float | None = None
    for name in order:
        v = _num(values.get(name))
        if parts:
            parts.append(" = " if v is not None and prev is not None and math.isclose(v, prev, abs_tol=1e-9) else " > ")
        parts.append(name)
        prev = v
    return "".join(parts)


def _ladder_section(results: dict) -> dict:
    """CI chart, significance vs reference, ranking, confusion matrices, gates, skipped variants."""
    variants = {str(k): v for k, v in _d(results.get("variants")).items() if isinstance(v, dict)}
    ladder = _d(results.get("ladder"))
    if not variants or not ladder:
        return {"note": "No ladder statistics in results.json (evaluated with an older llmtailor?)."}
    metrics = [m for m in ladder.get("metrics", []) if m in _METRIC_LABELS]
    points = {n: [(_num(v.get(m)), *(_d(v.get("ci")).get(m) or (None, None))) if _num(v.get(m)) is not None
                  and _d(v.get("ci")).get(m) else None for m in metrics] for n, v in variants.items()}
    chart = plots.ladder_ci_png([_METRIC_LABELS.get(m, m) for m in metrics], points)
    ref = ladder.get("reference", "base")
    sig_rows = []
    for name, comp in _d(ladder.get("comparisons")).items():
        for m in metrics:
            c = _d(comp).get(m)
            if not c:
                continue
            ci = c.get("ci") or [None, None]
            sig_rows.append({"variant": name, "metric": _METRIC_LABELS.get(m, m), "diff": f"{c['diff']:+.3f}",
                             "ci": f"[{ci[0]:+.3f}, {ci[1]:+.3f}]", "p": f"{c['p_value']:.3g}",
                             "significant": bool(c.get("significant")),
                             "cls": "" if not c.get("significant") else ("good" if c["diff"] > 0 else "bad")})
    confusions = []
    for name, v in variants.items():
        cm = _d(v.get("confusion_matrix"))
        if cm.get("matrix"):
            peak = max((x for row in cm["matrix"] for x in row), default=1) or 1
            confusions.append({"variant": name, "columns": cm["columns"], "rows": [
                {"label": lab, "cells": [{"n": x, "alpha": round(0.85 * x / peak, 2), "diag": cm["columns"][j] == lab}
                                         for j, x in enumerate(row)]}
                for lab, row in zip(cm["labels"], cm["matrix"], strict=False)]})
    gates = _d(results.get("gates")).get("results") or []
    ranking = [(_METRIC_LABELS.get(m, m), ranking_text(order, {n: _d(v).get(m) for n, v in variants.items()}))
               for m, order in _d(ladder.get("ranking")).items()]
    try:
        from llmtailor.eval.advise import advise

        advice = advise(results)
    except Exception:  # noqa: BLE001 - advice decorates the report; its absence is not an error
        advice = {"lines": [], "levels": [], "warnings": []}
    return {"note": None, "chart_png": chart, "reference": ref, "significance": sig_rows, "confusions": confusions,
            "gates": gates, "ranking": ranking, "skipped": list(_d(results.get("skipped_variants")).items()),
            "task": results.get("task"), "headline": _METRIC_LABELS.get(results.get("headline_metric"), ""),
            "advice": list(zip(advice["lines"], advice["levels"], strict=True)), "warnings": advice["warnings"],
            "confidence": ladder.get("confidence"), "resamples": ladder.get("resamples")}


def _safety_section(results: dict) -> dict:
    reg, rt, jd = _d(results.get("regression")), _d(results.get("redteam")), _d(results.get("judge"))
    out: dict[str, Any] = {"regression": None, "redteam": None, "judge": None,
                           "notes": [f"{k}: {_d(v).get('reason')}" for k, v in
                                     (("regression", reg), ("red-team", rt), ("judge", jd))
                                     if _d(v).get("status") in ("skipped", "failed")]}
    if reg.get("status") == "ok":
        rows = [(c, _fmt(v.get("n")), _pct(v.get("base")), _pct(v.get("tuned")), f"{100 * v['drop']:+.0f} pts",
                 "bad" if v["drop"] > 0.05 else "") for c, v in _d(reg.get("categories")).items()]
        rows.append(("all", _fmt(reg.get("n_items")), _pct(reg.get("base")), _pct(reg.get("tuned")),
                     f"{100 * (reg.get('drop') or 0):+.0f} pts", "bad" if (reg.get("drop") or 0) > 0.05 else ""))
        ppl = _d(reg.get("perplexity"))
        out["regression"] = {"rows": rows, "ppl": (_fmt(ppl.get("base")), _fmt(ppl.get("tuned"))) if ppl else None}
    if rt.get("status") == "ok":
        rows = []
        for c, v in _d(rt.get("categories")).items():
            b, t = _d(v.get("base")), _d(v.get("tuned"))
            rows.append((c, v.get("expected"), _fmt(v.get("n")), _pct(b.get("pass_rate")), _pct(t.get("pass_rate")),
                         _pct(b.get("refusal_rate")), _pct(t.get("refusal_rate"))))
        b, t = _d(rt.get("base")), _d(rt.get("tuned"))
        out["redteam"] = {"rows": rows, "headline": [
            ("refusal on harmful probes", _pct(b.get("refusal")), _pct(t.get("refusal"))),
            ("over-refusal on benign probes", _pct(b.get("over_refusal")), _pct(t.get("over_refusal"))),
            ("all probes passed", _pct(b.get("pass_rate")), _pct(t.get("pass_rate")))]}
    if jd.get("variants"):
        vs = _d(jd.get("variants"))
        chart = plots.judge_png({n: (s.get("win_rate"), s.get("tie_rate"), s.get("loss_rate")) for n, s in vs.items()
                                 if s.get("win_rate") is not None})
        out["judge"] = {"chart_png": chart, "judge": jd.get("judge"), "rows": [
            (n, _fmt(s.get("n_judged")), _fmt(s.get("n_failed")), _pct(s.get("win_rate")), _pct(s.get("tie_rate")),
             _pct(s.get("loss_rate")), _pct(s.get("agreement"))) for n, s in vs.items()]}
    return out


# --------------------------------------------------------------------------- entry point


def _render(context: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE_NAME).render(**context)


def _project_name(run_dir: Path, run: dict) -> str | None:
    if run.get("project"):
        return str(run["project"])
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - the report never fails on a config it only decorates with
        return None
    return str(cfg["project"]) if isinstance(cfg, dict) and cfg.get("project") else None


def write_report(run_dir: Path, out: Path | None = None, title: str | None = None, sample_size: int = 20) -> Path:
    """Render the run folder into one self-contained HTML file (default run_dir/report.html); returns its path."""
    from llmtailor import __version__

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TailorError(f"{run_dir}: run folder not found")
    run, run_err = _read_json(run_dir / "run.json")
    notes = [run_err] if run_err else []
    if run is None and not run_err:
        notes.append("run.json is missing: this folder may not be a complete run.")
    run = _d(run)
    config_path = run_dir / "config.yaml"
    config_yaml = config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    evaluation = _eval_section(run_dir)
    results, _ = _read_json(run_dir / "eval" / "results.json")
    results = _d(results)
    project = _project_name(run_dir, run)
    context = {
        "title": title or (f"{project} · run report" if project else "llmtailor run report"),
        "run_id": str(run.get("run_id") or run_dir.name),
        "created": _format_date(run.get("created")),
        "status": str(run.get("status") or "unknown"),
        "status_class": _status_class(run.get("status")),
        "base_model": run.get("base_model"),
        "method": run.get("method"),
        "notes": notes,
        "summary": _summary(run),
        "config_yaml": config_yaml,
        "data": _data_section(run_dir, run),
        "leakage": _leakage_section(run_dir, run, results),
        "training": _training_section(run_dir, run),
        "evaluation": evaluation,
        "examples": _examples_section(run_dir, evaluation.get("names") or [], sample_size),
        "ladder": _ladder_section(results),
        "safety": _safety_section(results),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
    }
    out = Path(out) if out is not None else run_dir / "report.html"
    write_text(out, _render(context))
    return out
