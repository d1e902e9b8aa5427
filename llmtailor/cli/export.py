"""`tailor export`: a run's adapter as a GGUF LoRA adapter (or a merged, quantized GGUF) for llama.cpp and Ollama."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON, RUN
from llmtailor.cli.output import console, emit_json


def export(
    config: Path = CONFIG,
    run: str = RUN,
    fmt: str = typer.Option("gguf", "--format", help="gguf, or ollama (gguf plus a Modelfile for `ollama create`)."),
    merge: bool = typer.Option(False, "--merge", help="Merge the adapter into the base and write one full GGUF "
                               "(default: a GGUF LoRA adapter that llama.cpp applies on the base GGUF)."),
    quant: str = typer.Option(None, "--quant", help="With --merge: f16 (default), f32, q8_0, q4_k_m, ... (llama.cpp's "
                              "quantizer). Without: f32 (default) or f16 adapter tensors."),
    out: Path = typer.Option(None, "--out", help="Folder to write into; default: <run>/export."),
    json_out: bool = JSON,
) -> None:
    """Export a run for llama.cpp / Ollama and register the file (lineage: run -> adapter -> export)."""
    from rich.markup import escape

    from llmtailor.errors import TailorError

    try:
        _export(config, run, fmt, merge, quant, out, json_out)
    except TailorError as e:
        # Printed here with markup escaped: the install hint `llmtailor[llamacpp]` would otherwise read as a tag.
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _export(config: Path, run: str | None, fmt: str, merge: bool, quant: str | None, out: Path | None,
            json_out: bool) -> None:
    from llmtailor.config import load_config
    from llmtailor.export.project import check_request, export_run
    from llmtailor.runs import resolve_run

    check_request(fmt, merge, quant)  # bad flags fail before the config and the model are touched
    cfg = load_config(config)
    run_dir = resolve_run(cfg.runs_dir, run)
    what = "merged model" if merge else "LoRA adapter"
    with console.status(f"Exporting {what} of run {run_dir.name} to GGUF..."):
        result = export_run(cfg, run_dir, fmt=fmt, merge=merge, quant=quant, out=out)
    if json_out:
        emit_json(result.as_dict())
        return
    console.print(f"[green]wrote[/] {result.path} ({what}, {result.quant}, {result.size_mb} MB, {result.seconds} s)",
                  highlight=False)
    if not merge:
        console.print(f"base GGUF: {result.base_gguf}", highlight=False)
    if result.modelfile:
        console.print(f"[green]wrote[/] {result.modelfile}: `ollama create NAME -f {result.modelfile}`",
                      highlight=False)
    if result.registry_id:
        console.print(f"registered {result.registry_id} (`tailor registry lineage {result.registry_id}`)",
                      highlight=False)
