"""`tailor keys create|ls|revoke`: API keys bound to a tenant, groups and the models they may call."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json

app = typer.Typer(no_args_is_help=True)


def _registry(config: Path):
    from llmtailor.config import load_config
    from llmtailor.registry.db import Registry

    return Registry.for_config(load_config(config))


@app.command("create")
def create(
    tenant: str = typer.Option(..., "--tenant", help="Tenant: the key sees only this tenant's documents."),
    models: str = typer.Option(..., "--models", help="Comma-separated model names (aliases, adapters, base) or '*'."),
    groups: str = typer.Option("", "--groups", help="Comma-separated groups (document access)."),
    level: str = typer.Option("public", "--level", help="Clearance: public, internal, confidential, restricted."),
    rate_limit: int = typer.Option(None, "--rate-limit", help="Requests per minute (default serve.rate_limit...)."),
    name: str = typer.Option(None, "--name", help="A note to recognise the key by."),
    config: Path = CONFIG,
    json_out: bool = JSON,
) -> None:
    """Create a key; the secret is printed once and only its hash is stored."""
    from llmtailor.rag.acl import parse_groups, parse_level

    model_list = [m.strip() for m in models.split(",") if m.strip()]
    with _registry(config) as reg:
        kid, secret = reg.create_key(tenant, list(parse_groups(groups)), model_list, level=parse_level(level),
                                     rate_limit=rate_limit, name=name)
    if json_out:
        emit_json({"id": f"key-{kid}", "key": secret, "tenant": tenant})
    else:
        console.print(f"[green]created[/] key-{kid} for tenant {tenant}; store it now, it is not shown again:")
        print(secret)


@app.command("ls")
def ls(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Keys (never their secrets): tenant, groups, models, created, revoked."""
    from rich.table import Table

    with _registry(config) as reg:
        keys = reg.list_keys()
    if json_out:
        emit_json({"keys": keys})
        return
    table = Table("id", "prefix", "tenant", "groups", "models", "level", "rate/min", "created", "revoked")
    for k in keys:
        table.add_row(k["id"], k["prefix"] + "…", k["tenant"], ",".join(k["groups"]), ",".join(k["models"]),
                      str(k["level"]), str(k["rate_limit"] or "default"), k["created"], k["revoked"] or "")
    console.print(table)


@app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="key-<n> as listed by `tailor keys ls`."),
           config: Path = CONFIG) -> None:
    """Revoke a key: the server refuses it on its next request."""
    with _registry(config) as reg:
        reg.revoke_key(key_id)
    console.print(f"[green]revoked[/] {key_id}")
