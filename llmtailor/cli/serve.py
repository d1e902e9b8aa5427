"""`tailor serve`: the OpenAI-compatible server for the base model, its adapters and the config's aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json


def serve(
    config: Path = CONFIG,
    host: str = typer.Option(None, "--host", help="Interface (default serve.host, 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="TCP port (default serve.port, 8000)."),
    engine: str = typer.Option(None, "--engine", help="auto (default serve.engine: llama.cpp on CPU when "
                               "installed), llamacpp, transformers (every feature, DoRA) or vllm (GPU: vLLM's own "
                               "OpenAI server)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --engine vllm: print the vLLM command, start nothing."),
    json_out: bool = JSON,
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health and /metrics."""
    import uvicorn

    from llmtailor.config import load_config
    from llmtailor.errors import TailorError
    from llmtailor.registry.db import Registry
    from llmtailor.serve.app import create_app

    if engine not in (None, "auto", "llamacpp", "transformers", "vllm"):
        raise TailorError(f"--engine {engine}: choose auto, llamacpp, transformers or vllm")
    cfg = load_config(config)
    registry = Registry.for_config(cfg)
    if engine == "vllm":
        _serve_vllm(cfg, registry, host, port, dry_run=dry_run, json_out=json_out)
        return
    if cfg.serve.require_api_key and not registry.list_keys():
        console.print("[yellow]warning:[/] API keys are required and none exist: create one with "
                      "`tailor keys create --tenant T --models '*'`")
    from llmtailor.serve.engines import choose_engine

    choice = choose_engine(cfg.model, engine or cfg.serve.engine)
    console.print(f"engine: [bold]{choice.name}[/] ({choice.reason})")
    with console.status("Loading the base model..."):
        app = create_app(cfg, registry=registry, engine_name=choice.name)
    h, p = host or cfg.serve.host, port if port is not None else cfg.serve.port
    console.print(f"[green]serving[/] {app.state.server.base_name} on http://{h}:{p}/v1 "
                  f"(aliases: {', '.join(cfg.serve.aliases) or 'none'}; registry {registry.display_url})")
    uvicorn.run(app, host=h, port=p, log_level="warning")


def _serve_vllm(cfg: Any, registry: Any, host: str | None, port: int | None, *, dry_run: bool,
                json_out: bool) -> None:
    """Start vLLM's OpenAI server for the config's base and adapters (or just show the command)."""
    import shlex
    import subprocess

    from llmtailor.serve.vllm_engine import check_vllm_available, plan_vllm

    plan = plan_vllm(cfg, registry, host=host, port=port)
    if json_out:
        emit_json({"engine": "vllm", "dry_run": dry_run, **plan.as_dict()})
    else:
        console.print(f"[green]vllm[/] base {plan.base_name}, {len(plan.adapters)} LoRA adapter(s): "
                      f"{', '.join(plan.adapters) or 'none'}")
        for item in plan.not_carried:
            console.print(f"[yellow]not carried to vLLM:[/] {item}")
        console.print(shlex.join(plan.argv))
    if dry_run:
        return
    check_vllm_available(cfg.serve.require_api_key)
    raise typer.Exit(subprocess.call(plan.argv))
