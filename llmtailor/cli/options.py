"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path

import typer

CONFIG = typer.Option(Path("tailor.yaml"), "-c", "--config", help="Project file (tailor.yaml).")
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout (for scripts).")
RUN = typer.Option(None, "--run", help="Run id or folder; default: the latest completed run.")
