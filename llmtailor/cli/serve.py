"""`tailor serve`: the OpenAI-compatible server for the base model, its adapters and the config's aliases."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG
from llmtailor.cli.output import console


def serve(
    config: Path = CONFIG,
    host: str = typer.Option(None, "--host", help="Interface (default serve.host, 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="TCP port (default serve.port, 8000)."),
    engine: str = typer.Option("transformers", "--engine", help="transformers (built in); vllm is not built yet."),
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health and /metrics."""
    import uvicorn

    from llmtailor.config import load_config
    from llmtailor.errors import TailorError
    from llmtailor.registry.db import Registry
    from llmtailor.serve.app import create_app

    if engine != "transformers":
        raise TailorError("--engine vllm is not implemented yet; use --engine transformers")
    cfg = load_config(config)
    registry = Registry.for_config(cfg)
    if cfg.serve.require_api_key and not registry.list_keys():
        console.print("[yellow]warning:[/] API keys are required and none exist: create one with "
                      "`tailor keys create --tenant T --models '*'`")
    with console.status("Loading the base model..."):
        app = create_app(cfg, registry=registry)
    h, p = host or cfg.serve.host, port if port is not None else cfg.serve.port
    console.print(f"[green]serving[/] {app.state.server.base_name} on http://{h}:{p}/v1 "
                  f"(aliases: {', '.join(cfg.serve.aliases) or 'none'}; registry {registry.url})")
    uvicorn.run(app, host=h, port=p, log_level="warning")
