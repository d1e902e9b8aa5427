"""`tailor ui`: the workbench, a local web app over the project (runs, registry, data, playground, retrieval)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG
from llmtailor.cli.output import console


def ui(
    config: Path = CONFIG,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface; anything but loopback needs an admin key."),
    port: int = typer.Option(8765, "--port", help="TCP port."),
    admin_key: str = typer.Option(None, "--admin-key", envvar="LLMTAILOR_UI_KEY", show_envvar=True,
                                  help="Required when bound beyond this machine; open /login?key=KEY once."),
    serve_url: str = typer.Option(None, "--serve-url", help="Playground: use this running `tailor serve` instead "
                                  "of starting the project's server in this process."),
) -> None:
    """Start the workbench web UI on the project file (127.0.0.1:8765 by default)."""
    import uvicorn

    from llmtailor.ui.app import create_app
    from llmtailor.ui.security import check_bind

    check_bind(host, admin_key)
    app = create_app(config, admin_key=admin_key, serve_url=serve_url or os.environ.get("LLMTAILOR_UI_SERVE_URL"))
    shown = f"[{host}]" if ":" in host else host
    console.print(f"[green]workbench[/] on http://{shown}:{port}/ for {config}" +
                  (" (admin key required: open /login?key=...)" if admin_key else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning")
