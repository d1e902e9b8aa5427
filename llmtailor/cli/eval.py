"""`tailor eval` (the adaptation ladder on held-out data, with gates) and `tailor report`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON, RUN
from llmtailor.cli.output import console, emit_json

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)
GATE_EXIT = 3  # distinct from 1 (bad input) so CI can tell "model not good enough" from "eval broken"
SHOWN = ["accuracy", "macro_f1", "json_compliance", "field_accuracy_mean", "exact_match", "token_f1", "rouge_l",
         "bleu", "faithfulness", "answer_relevance", "context_precision", "context_recall", "citation_correctness",
         "cite_rate", "abstain_rate", "unscorable_rate", "truncated_rate", "eval_loss", "perplexity",
         "answer_length_tokens", "examples_per_s"]


def print_metrics(variants: dict[str, dict], ladder: dict | None = None) -> None:
    """Variants side by side, one row per metric, with 95% CIs and a * where the difference to base is significant."""
    from rich.table import Table

    names = list(variants)
    keys = [k for k in SHOWN if any(isinstance(v.get(k), int | float) and not isinstance(v.get(k), bool)
                                    for v in variants.values())]
    comps = (ladder or {}).get("comparisons", {})
    table = Table(title="adaptation ladder (held-out)", caption="[lo–hi]: 95% bootstrap CI; *: differs from "
                  f"{(ladder or {}).get('reference', 'base')} (paired bootstrap, p < 0.05)")
    table.add_column("metric")
    for n in names:
        table.add_column(n, justify="right")
    for k in keys:
        cells = []
        for n in names:
            v = variants[n].get(k)
            if not isinstance(v, int | float):
                cells.append("-")
                continue
            text = f"{v:.3g}"
            ci = (variants[n].get("ci") or {}).get(k)
            if ci:
                text += f" [{ci[0]:.2f}–{ci[1]:.2f}]"
            if comps.get(n, {}).get(k, {}).get("significant"):
                text += "*"
            cells.append(text)
        table.add_row(k, *cells)
    console.print(table)


def print_gates(gates: list[dict]) -> None:
    for g in gates:
        mark = "[green]pass[/]" if g["passed"] else "[bold red]FAIL[/]"
        console.print(f"gate {mark}  {g['text']}  ({g['reason']})", highlight=False)


def _gate_only(config: Path, run: str | None, json_out: bool) -> None:
    """Re-check the config's gates against the run's existing results.json (no generation)."""
    from llmtailor.config import load_config
    from llmtailor.errors import TailorError
    from llmtailor.eval.gates import check_gates
    from llmtailor.io import write_json
    from llmtailor.runs import resolve_run, update_run

    cfg = load_config(config)
    run_dir = resolve_run(cfg.runs_dir, run)
    path = run_dir / "eval" / "results.json"
    if not path.exists():
        raise TailorError(f"{path}: not found; run `tailor eval` first")
    results = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(results.get("data"), dict) or results["data"].get("status") == "skipped":
        from llmtailor.data.leakage import dataset_leakage_results
        from llmtailor.runs import read_run

        # results.json written before the leakage check existed: read it from the run's dataset card.
        results["data"] = dataset_leakage_results(read_run(run_dir).get("dataset_dir"))
    gates = check_gates(cfg.eval.gates, results)
    results["gates"] = {"passed": all(g["passed"] for g in gates), "results": gates}
    write_json(path, results)
    update_run(run_dir, gates=results["gates"])
    if json_out:
        emit_json({"run_dir": str(run_dir), "gates": gates, "passed": results["gates"]["passed"]})
    else:
        print_gates(gates)
    _exit_on_gates(gates)


def _exit_on_gates(gates: list[dict]) -> None:
    failed = [g for g in gates if not g["passed"]]
    if failed:
        console.print(f"[bold red]{len(failed)} gate(s) failed[/]: " + "; ".join(g["text"] for g in failed),
                      highlight=False)
        raise typer.Exit(GATE_EXIT)


@app.callback()
def eval_cmd(
    ctx: typer.Context,
    config: Path = CONFIG,
    run: str = RUN,
    json_out: bool = JSON,
    gate: bool = typer.Option(False, "--gate", help=f"Exit with code {GATE_EXIT} when any eval.gates check fails."),
    gate_only: bool = typer.Option(False, "--gate-only", help="Only re-check gates against the run's results."),
) -> None:
    """Evaluate the adaptation ladder (base, few-shot, RAG, tuned) on the held-out split and score it."""
    if ctx.invoked_subcommand is not None:
        return
    if gate_only:
        _gate_only(config, run, json_out)
        return
    from llmtailor.pipeline import eval_stage

    result = eval_stage(config, run=run, show_progress=True)
    if json_out:
        emit_json({"run_dir": str(result.run_dir), "results": str(result.results_path),
                   "n_examples": result.n_examples, "variants": result.variants,
                   "skipped_variants": result.skipped, "gates": result.gates})
    else:
        print_metrics(result.variants, result.results.get("ladder"))
        for name, reason in result.skipped.items():
            console.print(f"[yellow]skipped {name}[/]: {reason}", highlight=False)
        print_gates(result.gates)
        console.print(f"results: {result.results_path}")
    if gate:
        _exit_on_gates(result.gates)


def report(
    config: Path = CONFIG,
    run: str = RUN,
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write; default RUN/report.html."),
    json_out: bool = JSON,
) -> None:
    """Write the run's self-contained HTML report (config, data card, loss curve, ladder, safety, examples)."""
    from llmtailor.pipeline import report_stage

    path = report_stage(config, run=run, out=out)
    if json_out:
        emit_json({"report": str(path)})
    else:
        console.print(f"report: {path}")
