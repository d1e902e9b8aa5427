"""`tailor eval` (base vs tuned on held-out data) and `tailor report`."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON, RUN
from llmtailor.cli.output import console, emit_json

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)


def print_metrics(variants: dict[str, dict]) -> None:
    """Base vs tuned as a table, one row per metric."""
    from rich.table import Table

    names = list(variants)
    keys = [k for k, v in variants[names[0]].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    for n in names:
        table.add_column(n, justify="right")
    for k in keys:
        table.add_row(k, *[f"{variants[n].get(k, float('nan')):.4g}" if variants[n].get(k) is not None else "-"
                           for n in names])
    console.print(table)


@app.callback()
def eval_cmd(
    ctx: typer.Context,
    config: Path = CONFIG,
    run: str = RUN,
    json_out: bool = JSON,
) -> None:
    """Generate held-out answers with the base and the tuned model and score them."""
    if ctx.invoked_subcommand is not None:
        return
    from llmtailor.pipeline import eval_stage

    result = eval_stage(config, run=run, show_progress=True)
    if json_out:
        emit_json({"run_dir": str(result.run_dir), "results": str(result.results_path),
                   "n_examples": result.n_examples, "variants": result.variants})
    else:
        print_metrics(result.variants)
        console.print(f"results: {result.results_path}")


def report(
    config: Path = CONFIG,
    run: str = RUN,
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write; default RUN/report.html."),
    json_out: bool = JSON,
) -> None:
    """Write the run's self-contained HTML report (config, data card, loss curve, metrics, examples)."""
    from llmtailor.pipeline import report_stage

    path = report_stage(config, run=run, out=out)
    if json_out:
        emit_json({"report": str(path)})
    else:
        console.print(f"report: {path}")
