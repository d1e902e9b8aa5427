"""`tailor chat`: talk to the base or a tuned model through the same prompt renderer as training."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON, RUN
from llmtailor.cli.output import console, emit_json


def chat(
    config: Path = CONFIG,
    run: str = RUN,
    base: bool = typer.Option(False, "--base", help="Use the base model, not the tuned one."),
    message: str = typer.Option(None, "--message", "-m", help="Ask one question and exit (else interactive)."),
    system: str = typer.Option(None, "--system", help="System prompt; default: the data config's system_prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    json_out: bool = JSON,
) -> None:
    """Greedy chat; with --message it answers once (scriptable), otherwise it reads lines until EOF or /exit."""
    from llmtailor.config import load_config
    from llmtailor.generate import generate
    from llmtailor.models import load_model
    from llmtailor.runs import resolve_run

    cfg = load_config(config)
    adapter = None
    if not base:
        run_dir = resolve_run(cfg.runs_dir, run)
        adapter = run_dir / "adapter" if (run_dir / "adapter").exists() else run_dir / "model"
    model, tok = load_model(cfg.model, adapter=adapter)
    history: list[dict] = []
    system = system if system is not None else cfg.data.system_prompt
    if system:
        history.append({"role": "system", "content": system})

    def answer(text: str) -> str:
        history.append({"role": "user", "content": text})
        reply = generate(model, tok, [history], max_new_tokens=max_new_tokens)[0]
        history.append({"role": "assistant", "content": reply})
        return reply

    if message is not None:
        reply = answer(message)
        if json_out:
            emit_json({"model": "base" if base else str(adapter), "answer": reply})
        else:
            print(reply)
        return
    console.print("[dim]type a message; /exit to quit[/]")
    while True:
        try:
            text = input("> ")
        except EOFError:
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip():
            print(answer(text))
