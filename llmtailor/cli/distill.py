"""`tailor distill`: teacher answers the training prompts, the student is fine-tuned on the good answers."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json

HEADLINE = ("json_compliance", "field_accuracy_mean", "exact_match", "token_f1")


def distill(
    config: Path = CONFIG,
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the student afterwards and compare it "
                                  "with the teacher and the base on the same held-out rows."),
    json_out: bool = JSON,
) -> None:
    """Ask distill.teacher for answers (appended as they come; a rerun continues), drop empty, over-length and
    schema-failing ones, fine-tune the student (model.base_model) on the rest, optionally with logit distillation."""
    from llmtailor.config import load_config
    from llmtailor.io import write_json
    from llmtailor.train.distill import comparison, run_distill

    cfg = load_config(config)
    result = run_distill(cfg, show_progress=not json_out, say=console.print if not json_out else None)
    table = {}
    if evaluate and result.run_dir is not None:
        from llmtailor.pipeline import eval_stage

        eval_stage(cfg, run=str(result.run_dir), show_progress=not json_out)
        table = comparison(result.run_dir)
        write_json(result.run_dir / "eval" / "distill_comparison.json", table)
    if json_out:
        emit_json({**result.as_dict(), "comparison": table})
        return
    console.print(f"[green]teacher[/] {result.teacher.get('name')}: {result.kept} answers kept of {result.asked} "
                  f"asked this run ({result.prompts} prompts)")
    for reason, n in sorted(result.dropped.items()):
        console.print(f"  dropped {n}: {reason.replace('_', ' ')}")
    for kind, n in sorted(result.errors.items()):
        console.print(f"  [yellow]teacher failed {n}: {kind}[/] (retried by the next run)")
    console.print(f"student run: {result.run_dir}")
    if table:
        from rich.table import Table

        t = Table(title="student vs teacher vs base (same held-out rows)")
        t.add_column("model")
        shown = [m for m in HEADLINE if any(m in v for v in table.values())]
        for m in shown:
            t.add_column(m, justify="right")
        for name in ("base", "teacher", "student"):
            if name in table:
                t.add_row(name, *(_fmt(table[name].get(m)) for m in shown))
        console.print(t)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
