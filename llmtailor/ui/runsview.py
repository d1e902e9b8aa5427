"""What the workbench shows about runs, read straight from run folders (run.json, metrics.jsonl, eval/).

Reading the folders rather than the registry means a run started from the CLI, or one still training, shows up
at once; a folder that disappears while a page shows it becomes a 404 naming it, never a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from llmtailor.runs import list_runs

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")


class RunGone(LookupError):
    """A run id that names no run folder (unknown, or deleted since the page was shown)."""

    def __init__(self, run_id: str, runs_dir: Path):
        super().__init__(f"run {run_id!r} not found in {runs_dir} (unknown id, or its folder was deleted)")
        self.run_id = run_id


def find_run(runs_dir: Path, run_id: str) -> Path:
    """The folder of `run_id`; ids are plain names, so no URL can reach outside runs_dir."""
    if not RUN_ID.match(run_id):
        raise RunGone(run_id, runs_dir)
    path = runs_dir / run_id
    if not (path / "run.json").is_file():
        raise RunGone(run_id, runs_dir)
    return path


def _json(path: Path) -> dict[str, Any]:
    """A JSON file, or {} when absent, half-written or removed while reading."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_info(run_dir: Path) -> dict[str, Any]:
    """run.json; raises RunGone when the folder vanished (a run.json is written atomically, so never half)."""
    info = _json(run_dir / "run.json")
    if not info and not (run_dir / "run.json").exists():
        raise RunGone(run_dir.name, run_dir.parent)
    return info


def results(run_dir: Path) -> dict[str, Any]:
    return _json(run_dir / "eval" / "results.json")


def gates_passed(res: dict[str, Any], info: dict[str, Any]) -> bool | None:
    """True / False when the run's evaluation defined gates, else None."""
    gates = res.get("gates") or info.get("gates")
    if isinstance(gates, dict) and isinstance(gates.get("passed"), bool):
        return gates["passed"]
    return None


def summary(run_dir: Path) -> dict[str, Any]:
    """One row of the runs table."""
    info = read_info(run_dir)
    res = results(run_dir)
    headline = res.get("headline_metric")
    variants = res.get("variants") or {}
    tuned = variants.get("tuned") or {}
    status = info.get("status", "unknown")
    steps, loss = info.get("steps"), info.get("final_loss")
    speed = info.get("train_tokens_per_s")
    if status == "running":  # run.json gets steps, final loss and speed at the end; until then, metrics.jsonl's
        rows, _ = metric_rows(run_dir)
        points = loss_points(rows)
        if points:
            steps, loss = points[-1]
        speed = tokens_per_s(rows)
    row = {
        "id": run_dir.name,
        "status": status,
        "method": info.get("method"),
        "dataset": (info.get("dataset_hash") or "")[:12],
        "steps": steps,
        "tokens_per_s": speed,
        "final_loss": loss,
        "headline": headline,
        "headline_value": tuned.get(headline) if headline else None,
        "gates": gates_passed(res, info),
        "created": info.get("created", ""),
    }
    return row | {"cells": cells(row)}


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else ""


def cells(row: dict[str, Any]) -> dict[str, str]:
    """The runs table's text for one row, formatted once here so the page and its live refresh (app.js) agree."""
    headline = ""
    if row["headline"]:
        value = _fmt(row["headline_value"], ".3f") or "–"
        headline = f"{row['headline']} {value}"
    return {"method": str(row["method"] or ""), "dataset": row["dataset"],
            "steps": str(row["steps"]) if row["steps"] is not None else "",
            "tokens_per_s": _fmt(row["tokens_per_s"], ".0f"), "final_loss": _fmt(row["final_loss"], ".4f"),
            "headline": headline, "created": str(row["created"] or "")}


def all_summaries(runs_dir: Path) -> list[dict[str, Any]]:
    """Newest first; a folder deleted between listing and reading is skipped."""
    out = []
    for run in reversed(list_runs(runs_dir)):
        try:
            out.append(summary(run))
        except RunGone:
            continue
    return out


def metric_rows(run_dir: Path, start_line: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Parsed rows of metrics.jsonl from line `start_line` on, and the next line to read.

    A line still being written (no newline yet) is left for the next read."""
    try:
        text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    except OSError:
        return [], start_line
    complete = text.split("\n")[:-1]  # the part after the last newline is unfinished
    rows = []
    for line in complete[start_line:]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, len(complete)


def _number(row: dict[str, Any], key: str) -> bool:
    return isinstance(row.get(key), int | float)


def loss_points(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, loss) of the rows that log a training loss."""
    return [(int(r["step"]), float(r["loss"])) for r in rows if _number(r, "loss") and "step" in r]


def tokens_per_s(rows: list[dict[str, Any]]) -> float | None:
    """Training speed so far: tokens between the first and the newest logged step over the wall time between them
    (rows carry `num_tokens` and `time`); None until two such rows exist."""
    marks = [(float(r["time"]), float(r["num_tokens"])) for r in rows
             if _number(r, "num_tokens") and _number(r, "time")]
    if len(marks) < 2 or marks[-1][0] <= marks[0][0]:
        return None
    return (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])


def curve(run_dir: Path, start_line: int = 0) -> tuple[list[tuple[int, float]], int]:
    """(step, loss) points from metrics.jsonl from line `start_line` on, and the next line to read."""
    rows, next_line = metric_rows(run_dir, start_line)
    return loss_points(rows), next_line


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (lists kept whole, as JSON)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj) if isinstance(obj, list) else obj}


def run_config(run_dir: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def config_diff(run_dirs: list[Path]) -> list[tuple[str, list[Any]]]:
    """Keys whose values differ between the runs' resolved configs (paths included: they show the data moved)."""
    flats = [flatten(run_config(d)) for d in run_dirs]
    keys = sorted(set().union(*flats))
    return [(k, [f.get(k, "—") for f in flats]) for k in keys if len({json.dumps(f.get(k), default=str)
                                                                       for f in flats}) > 1]


def ladder(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """variant x metric rows, each with one (value, interval) per run; only numeric metrics."""
    per_run = [results(d).get("variants") or {} for d in run_dirs]
    variants: list[str] = []
    for v in per_run:
        variants += [name for name in v if name not in variants]
    rows = []
    for name in variants:
        metrics: list[str] = []
        for v in per_run:
            for m, val in (v.get(name) or {}).items():
                if isinstance(val, int | float) and not isinstance(val, bool) and m not in metrics:
                    metrics.append(m)
        for m in metrics:
            cells = []
            for v in per_run:
                agg = v.get(name) or {}
                ci = (agg.get("ci") or {}).get(m)
                cells.append({"value": agg.get(m), "ci": ci if isinstance(ci, list) and len(ci) == 2 else None})
            rows.append({"variant": name, "metric": m, "cells": cells})
    return rows


def examples(run_dir: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = (run_dir / "eval" / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        out[str(row.get("id", i))] = row
    return out


def disagreements(run_dirs: list[Path], variant: str = "tuned", limit: int = 25) -> list[dict[str, Any]]:
    """Held-out examples where the runs' `variant` answers differ, with each run's answer and score."""
    per_run = [examples(d) for d in run_dirs]
    common = [k for k in per_run[0] if all(k in ex for ex in per_run[1:])] if per_run else []
    out = []
    for key in common:
        rows = [ex[key] for ex in per_run]
        answers = [(r.get("outputs") or {}).get(variant) for r in rows]
        if len({json.dumps(a) for a in answers}) > 1:
            out.append({"id": key, "prompt": rows[0].get("prompt"), "reference": rows[0].get("reference"),
                        "answers": answers, "scores": [(r.get("scores") or {}).get(variant) for r in rows]})
            if len(out) >= limit:
                break
    return out


def svg_curves(series: list[tuple[str, list[tuple[int, float]]]], width: int = 640, height: int = 260) -> str:
    """Loss curves overlaid as an inline SVG; labels go through the template's escaping, numbers are formatted."""
    pts = [p for _, s in series for p in s]
    pad = 40
    if not pts:
        return (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img"><text x="{pad}" y="{height // 2}">'
                "no loss logged yet</text></svg>")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1e-9

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="loss curves">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>',
             f'<text x="{pad}" y="{pad - 8}" font-size="11">{y1:.4g}</text>',
             f'<text x="{pad}" y="{height - pad + 14}" font-size="11">{y0:.4g} @ step {x0}</text>',
             f'<text x="{width - pad - 60}" y="{height - pad + 14}" font-size="11">step {x1}</text>']
    for i, (_, s) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline class="curve" fill="none" stroke="{color}" stroke-width="2" points="{line}"/>')
    parts.append("</svg>")
    return "".join(parts)
