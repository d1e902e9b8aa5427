"""`tailor data synth`: evolve the training rows into synthetic ones (Evol-Instruct) through a generator."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json


def synth(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Evolve the train split's rows with the synth.generator; kept rows are appended to synth.output as they come,
    so an interrupted run continues where it stopped. Add the output to data.sources with `origin: synthetic`."""
    from llmtailor.config import load_config
    from llmtailor.data.synth import run_synth

    cfg = load_config(config)
    result = run_synth(cfg, show_progress=not json_out)
    if json_out:
        emit_json(result.as_dict())
        if result.errors:  # rows are safe, but some attempts are still open: scripts must notice
            raise typer.Exit(1)
        return
    console.print(f"[green]kept[/] {result.kept} of {result.attempts} evolutions from {result.seeds} seed rows"
                  + (f" ({result.skipped_done} done by an earlier run, skipped)" if result.skipped_done else ""))
    for reason, n in sorted(result.dropped.items()):
        console.print(f"  dropped {n}: {reason.replace('_', ' ')}")
    for kind, n in sorted(result.errors.items()):
        console.print(f"  [yellow]generator failed {n}: {kind}[/] (retried by the next run)")
    totals = result.totals
    console.print(f"{result.output}: {totals.get('kept', 0)} synthetic rows in all")
    listed = any(Path(s.path).resolve() == Path(result.output).resolve() for s in cfg.data.sources)
    if not listed:
        console.print("next: add it to data.sources with `origin: synthetic`, then `tailor data prepare`")
    if result.errors:
        console.print("[yellow]some attempts failed for outside reasons; rerun `tailor data synth` to retry them[/]")
        raise typer.Exit(1)
