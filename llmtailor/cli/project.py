"""`tailor init`, `tailor run` and `tailor config`: the project file and the whole loop."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json
from llmtailor.errors import TailorError

config_app = typer.Typer(no_args_is_help=True)

DEMO_FILES = {"tailor.yaml": "tailor.yaml", "tickets.jsonl": "data/tickets.jsonl",
              "ticket.schema.json": "ticket.schema.json"}


def init(
    directory: Path = typer.Argument(..., help="Folder to create the project in."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing tailor.yaml there."),
    json_out: bool = JSON,
) -> None:
    """Write the demo project: support-ticket triage to JSON, with bad rows, duplicates and PII to clean."""
    from llmtailor.io import atomic_path

    target = directory / "tailor.yaml"
    if target.exists() and not force:
        raise TailorError(f"{target}: already exists (use --force to overwrite)")
    demo = resources.files("llmtailor") / "assets" / "demo"
    written = []
    for src, dst in DEMO_FILES.items():
        out = directory / dst
        with atomic_path(out) as tmp, resources.as_file(demo / src) as f:
            shutil.copyfile(f, tmp)
        written.append(str(out))
    if json_out:
        emit_json({"project": str(directory), "files": written})
    else:
        console.print(f"[green]created[/] {directory}: " + ", ".join(DEMO_FILES.values()))
        console.print(f"next: [bold]tailor run -c {target}[/]")


def run(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """prepare -> train -> eval -> report, printing where the report is."""
    from llmtailor.cli.eval import print_metrics
    from llmtailor.pipeline import run_all

    result = run_all(config, show_progress=True, say=console.print)
    if json_out:
        emit_json(result.as_dict())
        return
    print_metrics(result.metrics)
    console.print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.stage_seconds.items()))
    console.print(f"[bold green]report:[/] {result.report}")


@config_app.command("show")
def show(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Print the resolved config, defaults filled in and paths made absolute."""
    from llmtailor.config import load_config

    cfg = load_config(config)
    if json_out:
        emit_json(json.loads(cfg.model_dump_json()))
    else:
        print(cfg.to_yaml(), end="")


@config_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of tailor.yaml (for editor completion and validation)."""
    from llmtailor.config import json_schema

    print(json.dumps(json_schema(), indent=2))


@config_app.command("validate")
def validate(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Check a tailor.yaml without running anything."""
    from llmtailor.config import load_config

    load_config(config)
    if json_out:
        emit_json({"config": str(config), "ok": True})
    else:
        console.print(f"[green]ok[/] {config}")
