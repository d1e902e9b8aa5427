"""`tailor advise`: read the latest ladder and say, in plain words, which adaptation to ship."""

from __future__ import annotations

import json
from pathlib import Path

from llmtailor.cli.options import CONFIG, JSON, RUN
from llmtailor.cli.output import console, emit_json


def advise(config: Path = CONFIG, run: str = RUN, json_out: bool = JSON) -> None:
    """Recommend a variant from the run's eval/results.json (no model is loaded); the verdict comes first."""
    from llmtailor.config import load_config
    from llmtailor.errors import TailorError
    from llmtailor.eval.advise import advise as make_advice
    from llmtailor.runs import latest_run, resolve_run

    cfg = load_config(config)
    if run is None:
        found = None
        for status in ("completed", None):
            cand = latest_run(cfg.runs_dir, status=status)
            if cand is not None and (cand / "eval" / "results.json").exists():
                found = cand
                break
        if found is None:
            raise TailorError(f"{cfg.runs_dir}: no evaluated run yet; run `tailor eval -c {config}` first")
        run_dir = found
    else:
        run_dir = resolve_run(cfg.runs_dir, run)
    path = run_dir / "eval" / "results.json"
    if not path.exists():
        raise TailorError(f"{path}: not found; run `tailor eval -c {config} --run {run_dir.name}` first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TailorError(f"{path}: unreadable ({e.msg}); re-run `tailor eval`") from None
    advice = make_advice(results)
    if json_out:
        emit_json({"run_dir": str(run_dir), **advice})
        return
    if results.get("status") == "partial":
        console.print("[yellow]note[/]: this evaluation did not finish; advice uses the variants it completed")
    style = {"block": "bold red", "caution": "yellow"}  # the verdict and what contradicts it stand out
    for line, level in zip(advice["lines"], advice["levels"], strict=True):
        console.print(line, style=style.get(level), highlight=False, soft_wrap=True, markup=False)
    for w in advice["warnings"]:
        console.print(f"[bold yellow]warning[/]: {w}", highlight=False, soft_wrap=True)
