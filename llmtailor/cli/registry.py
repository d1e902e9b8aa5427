"""`tailor registry ls|show|lineage|sync`: what was built from what, and where it is deployed."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json

app = typer.Typer(no_args_is_help=True)


def _open(config: Path):
    from llmtailor.config import load_config
    from llmtailor.registry.db import Registry

    cfg = load_config(config)
    return cfg, Registry.for_config(cfg)


@app.command("ls")
def ls(kind: str = typer.Option(None, "--kind", help="dataset, run, adapter, index, evaluation or deployment."),
       config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Everything registered, oldest first."""
    from rich.table import Table

    _, reg = _open(config)
    rows = reg.list(kind)
    if json_out:
        emit_json({"items": rows})
        return
    table = Table("kind", "id", "created", "detail")
    for r in rows:
        detail = r.get("path") or ""
        if r["kind"] == "evaluation":
            detail = f"adapter {r['adapter_id']}, gates {r['passed']}"
        elif r["kind"] == "deployment":
            detail = f"{r['action']} {r['stage']}: {r['adapter_id']}" + (
                f" + canary {r['canary_adapter_id']} {r['canary_percent']:g}%" if r["canary_adapter_id"] else "")
        table.add_row(r["kind"], r["id"], r["created"], detail)
    console.print(table)


@app.command("show")
def show(ident: str = typer.Argument(..., help="Any registry id."), config: Path = CONFIG) -> None:
    """One record as JSON."""
    _, reg = _open(config)
    emit_json(reg.show(ident))


@app.command("lineage")
def lineage(ident: str = typer.Argument(..., help="A dataset, run, adapter, evaluation or deployment id."),
            config: Path = CONFIG, json_out: bool = JSON) -> None:
    """dataset -> run -> adapter -> evaluation -> deployment."""
    _, reg = _open(config)
    chain = reg.lineage(ident)
    if json_out:
        emit_json({"lineage": chain})
        return
    for i, item in enumerate(chain):
        arrow = "   " if i == 0 else "-> "
        console.print(f"{arrow}[bold]{item['kind']}[/] {item['id']}  {item['summary']}  [dim]{item['created']}[/]",
                      highlight=False)


@app.command("sync")
def sync(config: Path = CONFIG) -> None:
    """Register every run folder under runs_dir (runs made while the registry was unavailable)."""
    from llmtailor.registry.hooks import sync_run
    from llmtailor.runs import list_runs

    cfg, reg = _open(config)
    n = 0
    for run in list_runs(cfg.runs_dir):
        sync_run(reg, run)
        n += 1
    console.print(f"[green]synced[/] {n} runs into {reg.url}")
