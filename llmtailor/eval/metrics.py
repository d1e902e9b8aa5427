"""Text and JSON metrics for generated answers: pure, deterministic functions.

`score_examples` is the one entry point the eval stage calls: it scores every prediction against its
reference and returns an aggregate (means over the rows a metric applies to) plus one dict per row.
Rows without a reference skip the reference-based metrics and are counted under `skipped`; no
metric is ever NaN. Heavy libraries (rouge-score imports NLTK) are imported on first use.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmtailor.errors import RowError, TailorError

TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu")
_ARTICLES = {"a", "an", "the"}
_WS = re.compile(r"\s+")
_MAX_ERROR_CHARS = 240


# --------------------------------------------------------------------------- text


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~"


def normalize_text(s: str | None) -> str:
    """Lowercase, collapse whitespace, and strip whitespace and punctuation from both ends."""
    if not s:
        return ""
    s = _WS.sub(" ", s.lower()).strip()
    start, end = 0, len(s)
    while start < end and (s[start].isspace() or _is_punct(s[start])):
        start += 1
    while end > start and (s[end - 1].isspace() or _is_punct(s[end - 1])):
        end -= 1
    return s[start:end]


def _squad_tokens(s: str) -> list[str]:
    """SQuAD answer normalisation: lowercase, drop punctuation and English articles, split on whitespace."""
    s = "".join(" " if _is_punct(ch) else ch for ch in s.lower())
    return [t for t in s.split() if t not in _ARTICLES]


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style F1 over bags of normalised tokens (1.0 when both are empty after normalisation)."""
    p, r = _squad_tokens(pred or ""), _squad_tokens(ref or "")
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


class _UnicodeTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9]; this one is identical on ASCII but keeps any letter."""

    _TOKEN = re.compile(r"[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words)."""
    if not (pred or "").strip() and not (ref or "").strip():
        return 1.0
    return float(_rouge_scorer().score(ref or "", pred or "")["rougeL"].fmeasure)


def bleu_corpus(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, one reference per prediction), scaled to 0-1; 0.0 for an empty corpus."""
    if len(preds) != len(refs):
        raise TailorError(f"bleu: {len(preds)} predictions but {len(refs)} references")
    if not preds:
        return 0.0
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score) / 100.0


# --------------------------------------------------------------------------- JSON


def parse_json_output(text: str | None) -> tuple[Any | None, str | None]:
    """Parse a model's answer as JSON.

    Returns `(obj, None)` when the whole text is JSON. Models often add chatter or code fences, so
    otherwise the first balanced `{...}` object that parses is returned as `(obj, note)`, the note
    saying extra text was present. When nothing parses: `(None, error)`.
    """
    if text is None or not text.strip():
        return None, "empty output"
    stripped = text.strip()
    try:
        return json.loads(stripped), None
    except json.JSONDecodeError as e:
        whole_error = f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    decoder = json.JSONDecoder()
    start = stripped.find("{")
    tries = 0
    while start != -1 and tries < 50:
        try:
            obj, end = decoder.raw_decode(stripped, start)
        except json.JSONDecodeError:
            obj, end = None, -1
        if isinstance(obj, dict):
            before, after = stripped[:start].strip(), stripped[end:].strip()
            where = " and ".join(w for w, t in (("before", before), ("after", after)) if t)
            return obj, f"extra text {where} the JSON object"
        start = stripped.find("{", start + 1)
        tries += 1
    if "{" not in stripped:
        return None, f"{whole_error}; no JSON object found"
    return None, whole_error


def _canonical(value: Any) -> Any:
    """Sorted keys, strings with whitespace collapsed and stripped, recursively."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, str):
        return _WS.sub(" ", value).strip()
    return value


def _canonical_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _strict_json_object(text: str | None) -> dict | None:
    """The text as a JSON object, or None (no chatter allowed)."""
    if not text:
        return None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def exact_match(pred: str, ref: str) -> float:
    """1.0 when prediction and reference agree, else 0.0.

    If both are JSON objects (the whole text, no chatter), they are compared canonically: key order and
    whitespace inside string values are ignored, case is not. Otherwise the normalised texts are compared.
    """
    p_obj, r_obj = _strict_json_object(pred), _strict_json_object(ref)
    if p_obj is not None and r_obj is not None:
        return float(_canonical_json(p_obj) == _canonical_json(r_obj))
    return float(normalize_text(pred) == normalize_text(ref))


@functools.lru_cache(maxsize=8)
def _validator_for(schema_json: str):
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise TailorError(f"invalid JSON Schema: {_schema_error_text(e)}") from None
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _schema_error_text(e: Any) -> str:
    where = "/".join(str(p) for p in e.absolute_path) or "(root)"
    msg = e.message if len(e.message) <= _MAX_ERROR_CHARS else e.message[:_MAX_ERROR_CHARS] + "…"
    return f"{where}: {msg}"


def json_compliance(pred: str, schema: dict | None) -> dict:
    """Does the answer parse as JSON and satisfy the schema?

    Returns `{"parses", "valid", "error", "extra_text"}`. `extra_text` is True when the JSON object had
    to be cut out of surrounding chatter; the object is still validated. Without a schema, `valid`
    means "parses to a JSON object". An invalid schema raises TailorError.
    """
    obj, note = parse_json_output(pred)
    if obj is None:
        return {"parses": False, "valid": False, "error": note, "extra_text": False}
    extra_text = note is not None
    if schema is None:
        valid = isinstance(obj, dict)
        return {
            "parses": True,
            "valid": valid,
            "error": None if valid else f"expected a JSON object, got {type(obj).__name__}",
            "extra_text": extra_text,
        }
    validator = _validator_for(json.dumps(schema, sort_keys=True))
    from jsonschema.exceptions import best_match

    err = best_match(validator.iter_errors(obj))
    return {
        "parses": True,
        "valid": err is None,
        "error": None if err is None else _schema_error_text(err),
        "extra_text": extra_text,
    }


def field_accuracy(pred_obj: Any, ref_obj: dict) -> dict[str, int]:
    """1/0 per key of the reference object: does the prediction hold the same value (canonically)?"""
    if not isinstance(ref_obj, dict):
        return {}
    pred = pred_obj if isinstance(pred_obj, dict) else {}
    out: dict[str, int] = {}
    for key, ref_value in ref_obj.items():
        k = str(key)
        out[k] = int(key in pred and _canonical_json(pred[key]) == _canonical_json(ref_value))
    return out


def load_schema(path: str | Path) -> dict:
    """Read and check a JSON Schema file; errors name the file (and line for bad JSON)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    path = Path(path)
    if not path.is_file():
        raise TailorError(f"{path}: JSON Schema file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TailorError(f"{path}: cannot read JSON Schema ({e})") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(path, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(schema, (dict, bool)):
        raise TailorError(f"{path}: a JSON Schema must be an object, got {type(schema).__name__}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise TailorError(f"{path}: invalid JSON Schema: {_schema_error_text(e)}") from None
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    return schema


# --------------------------------------------------------------------------- all together


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_examples(
    preds: Sequence[str],
    refs: Sequence[str | None],
    schema: dict | None,
    metrics: Sequence[str],
) -> tuple[dict, list[dict]]:
    """Score every prediction against its reference.

    `metrics` uses the EvalConfig names; "loss" is computed by the eval stage, not here.
    Aggregate keys: exact_match, token_f1, rouge_l, bleu (0-1), json_parse_rate, json_compliance,
    json_extra_text_rate, field_accuracy ({field: mean}), answer_length_tokens (mean whitespace tokens),
    n (rows), skipped ({metric: rows without a reference}). A metric with no row to score is None.

    JSON metrics run on every row when a schema is given; without one, on the rows whose reference is a
    JSON object. Per-row dicts hold the metrics that applied to the row: exact_match, token_f1, rouge_l,
    json_parses, json_valid, json_error, json_extra_text, field_accuracy, answer_length_tokens.
    """
    if len(preds) != len(refs):
        raise TailorError(f"eval: {len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise TailorError("empty eval set: no held-out examples to score (check data.eval split and eval.max_examples)")
    wanted = set(metrics)
    unknown = wanted - set(TEXT_METRICS) - {"loss", "json_compliance", "field_accuracy"}
    if unknown:
        raise TailorError(f"eval.metrics: unknown metric(s) {sorted(unknown)}")
    if schema is not None:
        _validator_for(json.dumps(schema, sort_keys=True))  # fail early on a bad schema

    ref_metrics = [m for m in (*TEXT_METRICS, "field_accuracy") if m in wanted]
    skipped = {m: 0 for m in ref_metrics}
    sums: dict[str, list[float]] = {m: [] for m in ("exact_match", "token_f1", "rouge_l")}
    bleu_preds: list[str] = []
    bleu_refs: list[str] = []
    parses: list[float] = []
    valids: list[float] = []
    extras: list[float] = []
    fields: dict[str, list[int]] = {}
    lengths: list[int] = []
    rows: list[dict] = []

    for pred, ref in zip(preds, refs, strict=True):
        pred = pred if isinstance(pred, str) else ("" if pred is None else str(pred))
        has_ref = isinstance(ref, str) and ref.strip() != ""
        row: dict[str, Any] = {"answer_length_tokens": len(pred.split())}
        lengths.append(row["answer_length_tokens"])
        if not has_ref:
            for m in ref_metrics:
                skipped[m] += 1
        else:
            if "exact_match" in wanted:
                row["exact_match"] = exact_match(pred, ref)
            if "token_f1" in wanted:
                row["token_f1"] = token_f1(pred, ref)
            if "rouge_l" in wanted:
                row["rouge_l"] = rouge_l(pred, ref)
            for m in sums:
                if m in row:
                    sums[m].append(row[m])
            if "bleu" in wanted:
                bleu_preds.append(pred)
                bleu_refs.append(ref)

        ref_obj = _strict_json_object(ref) if has_ref else None
        if "json_compliance" in wanted and (schema is not None or ref_obj is not None):
            comp = json_compliance(pred, schema)
            row.update(
                json_parses=comp["parses"],
                json_valid=comp["valid"],
                json_error=comp["error"],
                json_extra_text=comp["extra_text"],
            )
            parses.append(float(comp["parses"]))
            valids.append(float(comp["valid"]))
            extras.append(float(comp["extra_text"]))
        if "field_accuracy" in wanted and ref_obj is not None:
            pred_obj, _ = parse_json_output(pred)
            row["field_accuracy"] = field_accuracy(pred_obj, ref_obj)
            for k, v in row["field_accuracy"].items():
                fields.setdefault(k, []).append(v)
        rows.append(row)

    agg: dict[str, Any] = {"n": len(preds)}
    for m in ("exact_match", "token_f1", "rouge_l"):
        if m in wanted:
            agg[m] = _mean(sums[m])
    if "bleu" in wanted:
        agg["bleu"] = bleu_corpus(bleu_preds, bleu_refs) if bleu_preds else None
    if "json_compliance" in wanted:
        agg["json_parse_rate"] = _mean(parses)
        agg["json_compliance"] = _mean(valids)
        agg["json_extra_text_rate"] = _mean(extras)
    if "field_accuracy" in wanted:
        agg["field_accuracy"] = {k: sum(v) / len(v) for k, v in sorted(fields.items())}
    agg["answer_length_tokens"] = _mean([float(x) for x in lengths])
    agg["skipped"] = skipped
    return agg, rows
