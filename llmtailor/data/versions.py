"""Content-addressed dataset versions: output_dir/<hash>/{train,eval}.jsonl + card.json + card.md.

The hash covers the input rows, the data config and the tokenizer, so the same inputs always
name the same folder (reused, never rewritten) and any change makes a new one beside the old.
Folders are written under a hidden temporary name and renamed into place in one step; the temporary name carries
the writer's process id, so the leftovers of a killed writer are recognised and removed by the next one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.data.config import DataConfig
from llmtailor.data.mix import mix_markdown
from llmtailor.errors import RowError, TailorError
from llmtailor.io import publish_dir, stable_hash, write_json, write_jsonl, write_text

PIPELINE_VERSION = 2  # bump when the pipeline's output for the same input changes (2: eval_split + leakage)
FILES = ("train.jsonl", "eval.jsonl", "card.json", "card.md")
HISTOGRAM_BINS = 10


@dataclass
class DatasetVersion:
    """A prepared dataset folder and its data card."""

    hash: str
    path: Path
    card: dict[str, Any]
    reused: bool
    errors: list[RowError] = field(default_factory=list)  # this run's validation errors (empty when reused)

    @property
    def train_file(self) -> Path:
        return self.path / "train.jsonl"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.jsonl"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer as far as lengths go: class, vocabulary size, chat template and a probe encoding."""
    probe = "Hello world! 0123 <|im_end|> ünïcode\n  spaces"
    return stable_hash(
        {
            "class": type(tokenizer).__name__,
            "vocab": len(tokenizer),
            "template": getattr(tokenizer, "chat_template", None),
            "probe": tokenizer(probe, add_special_tokens=False)["input_ids"],
        }
    )


def hashed_config(cfg: DataConfig) -> dict[str, Any]:
    """The config as it affects the output: no output_dir, and sources by name and format (not their location)."""
    data = cfg.model_dump(mode="json", exclude={"output_dir"} | ({"mix"} if cfg.mix is None else set()))
    data["sources"] = [{"name": s.label, "format": s.format, **({"origin": s.origin} if s.origin else {})}
                       for s in cfg.sources]
    data["test_sources"] = [{"name": s.label, "format": s.format} for s in cfg.test_sources]
    return data


def version_hash(rows: list[dict[str, Any]], cfg: DataConfig, tokenizer_id: str) -> str:
    """stable_hash of the normalised input rows (test rows included), the data config and the tokenizer."""
    return stable_hash(
        {"rows": rows, "config": hashed_config(cfg), "tokenizer": tokenizer_id, "pipeline": PIPELINE_VERSION}
    )


def load_version(path: str | Path) -> DatasetVersion:
    """Open an existing version folder (e.g. to train on it)."""
    path = Path(path)
    card_file = path / "card.json"
    if not card_file.is_file():
        raise TailorError(f"{path}: not a dataset version (no card.json); run `tailor data prepare`")
    card = json.loads(card_file.read_text(encoding="utf-8"))
    return DatasetVersion(card.get("hash", path.name), path, card, reused=True)


def find_version(output_dir: Path, hash_: str) -> DatasetVersion | None:
    """The published version with this hash, if complete."""
    folder = output_dir / hash_
    if all((folder / f).is_file() for f in FILES):
        return load_version(folder)
    return None


def write_version(
    output_dir: Path, hash_: str, train: list[dict[str, Any]], evals: list[dict[str, Any]], card: dict[str, Any]
) -> Path:
    """Write the four files into a hidden temporary folder beside the final one, then rename it into place.

    An exception (or a kill) before the rename leaves no folder named like a version; the temporary
    folder is removed on exceptions and, being hidden and prefixed, is never mistaken for one.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(output_dir)
    final = output_dir / hash_
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{hash_}-{os.getpid()}-", dir=output_dir))
    try:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", evals)
        write_json(tmp / "card.json", card)
        write_text(tmp / "card.md", card_markdown(card))
        if final.exists() and not find_version(output_dir, hash_):
            raise TailorError(f"{final}: exists but is not a complete dataset version; remove it and rerun")
        return publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_dead_temporaries(output_dir: Path) -> list[Path]:
    """Delete `.tmp-<hash>-<pid>-*` folders whose writer process is gone (killed mid-write); a live writer's folder,
    or one named without a pid, is left alone. Returns what was removed."""
    removed = []
    for d in output_dir.glob(".tmp-*-*-*"):
        parts = d.name.split("-")
        if len(parts) < 4 or not parts[2].isdigit() or int(parts[2]) == os.getpid() or _alive(int(parts[2])):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(d)
            removed.append(d)
    return removed


def percentile(sorted_values: list[int], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def length_stats(lengths: list[int], max_seq_len: int) -> tuple[dict[str, float], dict[str, list[int]]]:
    """(min/mean/p50/p95/max/total tokens, histogram over 0..max_seq_len in equal bins)."""
    values = sorted(lengths)
    stats = {
        "min": values[0] if values else 0,
        "mean": round(sum(values) / len(values), 1) if values else 0.0,
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "max": values[-1] if values else 0,
        "total": sum(values),
    }
    top = max(max_seq_len, values[-1] if values else 0)
    edges = [round(top * i / HISTOGRAM_BINS) for i in range(HISTOGRAM_BINS + 1)]
    counts = [0] * HISTOGRAM_BINS
    for v in values:
        # bins are [edge_i, edge_i+1), the last one closed
        i = next((b for b in range(HISTOGRAM_BINS) if v < edges[b + 1]), HISTOGRAM_BINS - 1)
        counts[i] += 1
    return stats, {"edges": edges, "counts": counts}


def card_markdown(card: dict[str, Any]) -> str:
    """A readable data card."""
    split = card.get("eval_split") or {}
    golden = split.get("source") == "test_sources"
    where = " (eval = the golden test set, never trained on)" if golden else ""
    lines = [
        f"# Dataset {card['hash']}",
        "",
        f"Created {card['created']}. {card['rows_kept']} of {card['rows_in']} rows kept: "
        f"{card['train_rows']} train, {card['eval_rows']} eval{where}.",
        "",
        "## Sources",
        "",
        "| source | file | rows in | rows kept | share of kept |",
        "|---|---|---:|---:|---:|",
    ]
    for s in card["sources"]:
        lines.append(f"| {s['name']} | {s['path']} | {s['rows']} | {s['rows_kept']} | {s['share']:.1%} |")
    lines += ["", "## Dropped rows", "", "| reason | rows |", "|---|---:|"]
    lines += [f"| {reason} | {n} |" for reason, n in card["dropped"].items()]
    lines += [
        "",
        f"Truncated to fit: {card['truncated']}. System prompt added: {card['system_prompt_added']}. "
        f"Converted from Alpaca: {card['converted_alpaca']}.",
        "",
        "## Personal data redacted",
        "",
    ]
    if card["pii_enabled"]:
        lines += ["| entity | replaced |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in card["pii_counts"].items()]
        lines += ["", f"Rows changed: {card['pii_rows_changed']}."]
    else:
        lines.append("PII redaction was disabled.")
    t = card["token_lengths"]
    lines += [
        "",
        "## Token lengths",
        "",
        f"min {t['min']}, mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, max {t['max']} "
        f"(max_seq_len {card['config']['max_seq_len']}, {t['total']} tokens in all).",
        "",
        "```",
    ]
    hist = t["histogram"]
    peak = max(hist["counts"]) or 1
    for i, n in enumerate(hist["counts"]):
        lo, hi = hist["edges"][i], hist["edges"][i + 1]
        lines.append(f"{lo:>6}-{hi:<6} {n:>6} {'#' * round(40 * n / peak)}")
    lines += ["```", ""]
    lines += _eval_split_markdown(split) + _leakage_markdown(card.get("leakage")) + mix_markdown(card.get("mix"))
    lines += ["## Config", "", "```json", json.dumps(card["config"], indent=2), "```"]
    if card["errors"]:
        lines += ["", f"## Validation errors (first {len(card['errors'])} of {card['errors_total']})", ""]
        lines += [f"- `{e}`" for e in card["errors"]]
    if card.get("duplicates"):
        lines += ["", f"## Duplicates dropped (first {len(card['duplicates'])} of {card['duplicates_total']})", ""]
        lines += [f"- `{d['file']}:{d['line']}`: {d['kind']} copy (similarity {d['similarity']}) of `{d['copy_of']}`"
                  for d in card["duplicates"]]
    return "\n".join(lines) + "\n"


def _eval_split_markdown(split: dict[str, Any]) -> list[str]:
    """Where the eval rows came from."""
    if not split:
        return []
    lines = ["## Eval split", "", f"From the {split['description']}."]
    if split.get("source") == "test_sources":
        lines += ["", "| test source | file | rows |", "|---|---|---:|"]
        lines += [f"| {f['name']} | {f['path']} | {f['rows']} |" for f in split["files"]]
        lines += [
            "",
            f"Converted from Alpaca: {split['converted_alpaca']}. System prompt added: {split['system_prompt_added']}. "
            f"PII-redacted rows: {split['pii_rows_changed']}. Longer than max_seq_len (kept as they are): "
            f"{split['rows_over_max_seq_len']}.",
        ]
    return [*lines, ""]


def _leakage_markdown(leak: dict[str, Any] | None) -> list[str]:
    """Eval rows that also occur in train, each with its training twin."""
    if not leak:
        return []
    s = leak["settings"]
    lines = [
        "## Train/test leakage",
        "",
        f"**{leak['count']} of {leak['eval_rows']} eval rows** also occur in the training rows "
        f"({leak['exact']} exact, {leak['near']} near duplicates; MinHash Jaccard >= {s['threshold']}, "
        f"{s['ngram']}-word shingles, {s['num_perm']} permutations). Policy: {leak['policy']}"
        + (f" ({leak['dropped_from_train']} train rows dropped)." if leak["policy"] == "drop_from_train" else "."),
    ]
    if leak["rows"]:
        lines += ["", "| test row | train row | match | test text |", "|---|---|---|---|"]
        for r in leak["rows"]:
            t, tr = r["test"], r["train"]
            text = t["text"].replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {t['file']}:{t['line']} | {tr['file']}:{tr['line']} | {r['kind']} ({r['similarity']:.2f}) "
                f"| {text} |"
            )
        if leak["count"] > len(leak["rows"]):
            lines.append(f"\nFirst {len(leak['rows'])} of {leak['count']} listed.")
    return [*lines, ""]
