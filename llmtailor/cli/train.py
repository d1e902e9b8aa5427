"""`tailor train`: prepare (or reuse) the dataset version, then fine-tune."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json


def train(
    config: Path = CONFIG,
    resume: bool = typer.Option(False, "--resume", help="Continue the latest unfinished run from its checkpoint."),
    run: str = typer.Option(None, "--run", help="With --resume: the run id or folder to continue."),
    max_steps: int = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    json_out: bool = JSON,
) -> None:
    """Fine-tune the base model as the config says; each run gets a new folder under runs_dir."""
    from llmtailor.pipeline import train_stage

    result = train_stage(config, resume=resume, run=run, max_steps=max_steps, show_progress=True)
    if json_out:
        emit_json(result.as_dict())
    else:
        console.print(f"[green]trained[/] {result.steps} steps, final loss {result.final_loss:.4f}, "
                      f"{result.tokens_per_s:.0f} tokens/s")
        console.print(f"run folder: {result.run_dir}")
