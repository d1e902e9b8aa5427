"""`tailor promote` and `tailor rollback`: move adapters between stages; the server follows within seconds.

`--canary N` sends N% of a stage's users to the candidate; `--shadow` sends it a copy of every request instead,
whose answers are only logged (compare them with `tailor registry shadow`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json


def _open(config: Path):
    from llmtailor.config import load_config
    from llmtailor.registry.db import Registry

    cfg = load_config(config)
    return cfg, Registry.for_config(cfg)


def promote(
    adapter: str = typer.Argument(..., help="Adapter id (ad-<run>) or run id."),
    to: str = typer.Option("production", "--to", help="staging or production."),
    canary: float = typer.Option(None, "--canary", help="Send this percentage of traffic (sticky per key) to it."),
    shadow: bool = typer.Option(False, "--shadow", help="Send it a copy of every request; its answers are only "
                                "logged, never returned (compare with `tailor registry shadow`)."),
    force: bool = typer.Option(False, "--force", help="Promote even if its evaluation gates failed (recorded)."),
    note: str = typer.Option(None, "--note", help="Why (kept in the deployment history)."),
    config: Path = CONFIG,
    json_out: bool = JSON,
) -> None:
    """Deploy an adapter; refused when its evaluation gates failed unless --force."""
    from llmtailor.registry.hooks import sync_run

    cfg, reg = _open(config)
    with reg:
        if reg.adapter(adapter) is None and (cfg.runs_dir / adapter / "run.json").exists():
            sync_run(reg, cfg.runs_dir / adapter)  # a run made before the registry existed
        # Gates checked and the deployment written in one transaction, serialised with concurrent promotions.
        row = reg.promote(adapter, to, force=force, canary=canary, shadow=shadow, note=note)
    if json_out:
        emit_json(row)
        return
    if row.get("warning"):
        console.print(f"[yellow]forced:[/] the adapter {row['warning']}; recorded in {row['id']}")
    what = f"canary {row['canary_adapter_id']} at {canary:g}%" if canary else row["adapter_id"]
    if shadow:
        what = f"{row['adapter_id']}, shadowed by {row['shadow_adapter_id']}"
    console.print(f"[green]{to}[/] -> {what} ({row['id']})")


def rollback(
    stage: str = typer.Option("production", "--stage", help="staging or production."),
    config: Path = CONFIG,
    json_out: bool = JSON,
) -> None:
    """Return a stage to its previous deployment (a shadow, if any, is stopped)."""
    _, reg = _open(config)
    with reg:
        row = reg.rollback(stage)
    if json_out:
        emit_json(row)
    else:
        console.print(f"[green]rolled back[/] {stage} -> {row['adapter_id']} ({row['id']}: {row['note']})")
