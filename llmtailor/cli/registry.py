"""`tailor registry ls|show|lineage|sync|shadow`: what was built from what, where it is deployed, and how a
shadow candidate's answers compare with the ones users got."""

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
    with reg:
        rows = reg.list(kind)
    if json_out:
        emit_json({"items": rows})
        return
    table = Table("kind", "id", "created", "detail")
    for r in rows:
        detail = r.get("path") or ""
        if r["kind"] == "index":
            info = r.get("info") or {}
            detail = (f"{info.get('name')} {str(r.get('fingerprint'))[:12]}: {info.get('documents')} documents, "
                      f"{info.get('chunks')} chunks, {(info.get('embedding') or {}).get('model')}, {r['path']}")
        elif r["kind"] == "evaluation":
            detail = f"adapter {r['adapter_id']}, gates {r['passed']}"
        elif r["kind"] == "deployment":
            detail = f"{r['action']} {r['stage']}: {r['adapter_id']}" + (
                f" + canary {r['canary_adapter_id']} {r['canary_percent']:g}%" if r["canary_adapter_id"] else "") + (
                f" + shadow {r['shadow_adapter_id']}" if r.get("shadow_adapter_id") else "")
        table.add_row(r["kind"], r["id"], r["created"], detail)
    console.print(table)


@app.command("show")
def show(ident: str = typer.Argument(..., help="Any registry id."), config: Path = CONFIG) -> None:
    """One record as JSON."""
    _, reg = _open(config)
    with reg:
        emit_json(reg.show(ident))


@app.command("lineage")
def lineage(ident: str = typer.Argument(..., help="A dataset, run, adapter, index, evaluation or deployment id."),
            config: Path = CONFIG, json_out: bool = JSON) -> None:
    """dataset -> run -> adapter -> evaluation -> deployment; for an index, its versions."""
    _, reg = _open(config)
    with reg:
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
    with reg:
        for run in list_runs(cfg.runs_dir):
            sync_run(reg, run)
            n += 1
    console.print(f"[green]synced[/] {n} runs into {reg.display_url}")


@app.command("shadow")
def shadow(stage: str = typer.Option("production", "--stage", help="staging or production."),
           since_days: float = typer.Option(None, "--since-days", help="Only requests from the last N days."),
           last: int = typer.Option(10, "--last", help="Request pairs to print (all of them with --json)."),
           config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Shadow vs user answers: agreement (exact match) and latency of each side, then the newest pairs."""
    import datetime as dt

    from llmtailor.errors import TailorError
    from llmtailor.registry.db import STAGES
    from llmtailor.registry.shadow import shadow_report

    if stage not in STAGES:
        raise TailorError(f"unknown stage {stage!r}: use staging or production")
    _, reg = _open(config)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    since = now - dt.timedelta(days=since_days) if since_days else None
    with reg:
        report = shadow_report(reg, stage=stage, since=since, limit=None if json_out else last)
    if json_out:
        emit_json(report)
        return
    _print_shadow(report)


def _print_shadow(report: dict) -> None:
    from rich.table import Table

    if not report["summaries"]:
        console.print(f"no shadow answers logged for {report['stage']} (start one with `tailor promote ADAPTER "
                      "--shadow`)")
        return
    table = Table("shadow adapter", "requests", "compared", "agreement", "user p50 ms", "shadow p50 ms", "errors")
    for s in report["summaries"]:
        agree = f"{s['agreement']:.1%}" if s["agreement"] is not None else "-"
        table.add_row(s["shadow_adapter"], str(s["requests"]), str(s["compared"]), agree,
                      str(s["user_latency"]["p50_ms"]), str(s["shadow_latency"]["p50_ms"]), str(s["shadow_errors"]))
    console.print(table)
    if not report["content_logged"]:
        console.print("[yellow]answers were not logged[/] (serve.log_content: false): agreement cannot be judged")
    for p in report["pairs"]:
        mark = {True: "[green]same[/]", False: "[red]differs[/]", None: "[dim]?[/]"}[p["same"]]
        console.print(f"[bold]{p['request_id']}[/] {p['created']} {p['model']} {mark}", highlight=False)
        console.print(f"  prompt: {p['prompt']}", highlight=False, markup=False)
        console.print(f"  user   ({p['user_adapter']}, {p['user_latency_ms']:.0f} ms): {p['user_answer']}",
                      highlight=False, markup=False)
        console.print(f"  shadow ({p['shadow_adapter']}, {p['shadow_latency_ms']:.0f} ms, status "
                      f"{p['shadow_status']}): {p['shadow_answer']}", highlight=False, markup=False)
