"""`tailor data preferences` (build pairs from a model's sampled answers) and `tailor data check-preferences`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmtailor.cli import options
from llmtailor.cli.output import console, emit_json


def preferences(
    config: Path = options.CONFIG,
    from_run: Annotated[str | None, typer.Option("--from-run", help="Sample from this run's tuned model (id or "
                                                  "folder); default: the base model.")] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="Answers per prompt (default: "
                                                "preference.samples).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output JSONL (default: preference.out).")] = None,
    json_out: bool = options.JSON,
) -> None:
    """Sample several answers per training prompt, rank them by rule (schema, fields, token F1), write pairs."""
    from llmtailor.config import load_config
    from llmtailor.data.preference_pairs import build_preferences, summary_line
    from llmtailor.models import load_model
    from llmtailor.pipeline import prepare_stage
    from llmtailor.runs import resolve_run
    from llmtailor.train.dataset import load_rows

    cfg = load_config(config)
    version = prepare_stage(cfg, show_progress=not json_out)
    adapter = None
    if from_run is not None:
        run_dir = resolve_run(cfg.runs_dir, from_run)
        adapter = run_dir / "adapter" if (run_dir / "adapter").exists() else run_dir / "model"
    model, tok = load_model(cfg.model, adapter=adapter)
    stats = build_preferences(cfg, load_rows(version.path / "train.jsonl"), model, tok, samples=samples, out=out,
                              show_progress=not json_out)
    stats.model = str(adapter or cfg.model.base_model)
    stats.extra["dataset_hash"] = version.hash
    if json_out:
        emit_json(stats.as_dict())
        return
    console.print(summary_line(stats))
    if stats.pairs:
        console.print(f"written: {stats.out}")
    else:
        console.print("[yellow]no pairs written[/]: every prompt's answers scored the same; raise --samples or "
                      "preference.temperature")


def check_preferences(
    file: Annotated[Path, typer.Argument(help="Preference JSONL ({prompt, chosen, rejected} per line).")],
    json_out: bool = options.JSON,
) -> None:
    """Report every bad preference row as `file:line: field: problem`; exit 1 if any row is bad."""
    from llmtailor.data.preferences import validate_preferences

    report = validate_preferences(file)
    if json_out:
        emit_json(report.as_dict())
    else:
        for err in report.problems:
            console.print(str(err), markup=False, highlight=False, soft_wrap=True)
        colour = "red" if report.problems else "green"
        console.print(f"[{colour}]{len(report.rows)} of {report.total} rows ok, {len(report.problems)} bad[/]")
    if report.problems or not report.rows:
        raise typer.Exit(1)
