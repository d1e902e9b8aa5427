"""`tailor monitor`: drift, feedback and guardrail rates of production traffic; exports reviewed conversations."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json


def monitor(
    model: str = typer.Option(None, "--model", help="Only requests for this model name (alias, adapter, base)."),
    since_days: float = typer.Option(None, "--since-days", help="Only requests of the last N days."),
    dataset: Path = typer.Option(None, "--dataset", help="Training data to compare with (default: the production "
                                                          "adapter's dataset from the registry)."),
    export: bool = typer.Option(False, "--export-dataset", help="Turn thumbs-up conversations into chat rows and "
                                                               "prepare a new dataset version (training sources + "
                                                               "feedback)."),
    feedback_only: bool = typer.Option(False, "--feedback-only", help="With --export-dataset: the new version holds "
                                                                      "only the feedback rows."),
    config: Path = CONFIG,
    json_out: bool = JSON,
) -> None:
    """Report drift between production queries and training data; exit code 3 when a retraining threshold is crossed."""
    from llmtailor.config import load_config
    from llmtailor.registry.db import Registry
    from llmtailor.registry.monitor import export_dataset, monitor, render

    cfg = load_config(config)
    reg = Registry.for_config(cfg)
    since = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=since_days) \
        if since_days else None
    if export:
        from llmtailor.models import load_tokenizer

        out = export_dataset(reg, cfg, load_tokenizer(cfg.model), model=model, with_training_sources=not feedback_only)
        if json_out:
            emit_json(out)
        else:
            console.print(f"exported {out['exported']} reviewed conversations to {out['file']}; dataset "
                          f"{out['dataset']} at [bold]{out['path']}[/] ({'reused' if out['reused'] else 'new'})")
        return
    report = monitor(reg, cfg, model=model, since=since, dataset=dataset)
    if json_out:
        emit_json(report)
    else:
        console.print(render(report), highlight=False, soft_wrap=True)
    if report["retrain"]:
        raise typer.Exit(3)
