"""`tailor data`: check a data file, or prepare a versioned training set from tailor.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmtailor.cli import options
from llmtailor.cli.output import console, emit_json

app = typer.Typer(
    help="Validate chat/Alpaca JSONL, and prepare a deduplicated, PII-redacted, versioned train/eval split.",
    no_args_is_help=True,
)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="JSONL file of chat ({messages}) or Alpaca rows.")],
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="tailor.yaml: enables the token-length check with its model."),
    ] = None,
    max_seq_len: Annotated[
        int | None, typer.Option("--max-seq-len", help="Token limit (default: data.max_seq_len; needs -c).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, chat or alpaca.")] = "auto",
    json_out: bool = options.JSON,
) -> None:
    """Report every bad row as `file:line: field: problem`; exit 1 if any row is bad."""
    from llmtailor.data.validate import validate_file

    if fmt not in ("auto", "chat", "alpaca"):
        raise typer.BadParameter("must be auto, chat or alpaca", param_hint="--format")
    tokenizer = None
    system_prompt = None
    if config is not None:
        from llmtailor.config import load_config
        from llmtailor.models import load_tokenizer

        cfg = load_config(config)
        tokenizer = load_tokenizer(cfg.model)
        max_seq_len = max_seq_len or cfg.data.max_seq_len
        system_prompt = cfg.data.system_prompt
    elif max_seq_len is not None and not json_out:
        console.print("[yellow]--max-seq-len needs -c tailor.yaml (a tokenizer to count with); lengths not checked")

    report = validate_file(file, tokenizer=tokenizer, max_seq_len=max_seq_len, system_prompt=system_prompt, fmt=fmt)
    if json_out:
        emit_json(report.as_dict())
    else:
        for err in report.errors:
            console.print(str(err), markup=False, highlight=False, soft_wrap=True)
        colour = "red" if report.rows_bad else "green"
        console.print(
            f"[{colour}]{report.rows_ok} of {report.rows_total} rows ok, {report.rows_bad} bad "
            f"({len(report.errors)} problems)[/]" + ("" if tokenizer is not None else "; token lengths not checked")
        )
    if report.rows_bad:
        raise typer.Exit(1)


def summary(card: dict[str, Any]) -> dict[str, Any]:
    """The card without its bulky parts (config, histogram, error list)."""
    lengths = {k: v for k, v in card["token_lengths"].items() if k != "histogram"}
    return {**{k: v for k, v in card.items() if k not in ("config", "errors")}, "token_lengths": lengths}


@app.command()
def prepare(config: Path = options.CONFIG, json_out: bool = options.JSON) -> None:
    """Validate, fit to max_seq_len, dedup, redact PII and split data.sources (eval = data.test_sources when
    given) into datasets/<hash>/, checking eval rows for leakage from train."""
    from llmtailor.config import load_config
    from llmtailor.data.prepare import prepare as run_prepare
    from llmtailor.models import load_tokenizer

    cfg = load_config(config)
    tokenizer = load_tokenizer(cfg.model)
    version = run_prepare(cfg.data, tokenizer, show_progress=not json_out)
    if json_out:
        emit_json({"hash": version.hash, "path": str(version.path), "reused": version.reused, **summary(version.card)})
        return
    _print_card(version.card)
    state = "reused (inputs unchanged)" if version.reused else "written"
    console.print(f"dataset {version.hash} {state}: [bold]{version.path}[/]")
    if version.card["errors_total"]:
        console.print(f"{version.card['errors_total']} rows had problems; first ones in {version.path / 'card.md'}")
    leak = version.card.get("leakage") or {}
    if leak.get("count"):
        console.print(
            f"[yellow]leakage: {leak['count']} of {leak['eval_rows']} eval rows also occur in the training data[/]; "
            f"listed in {version.path / 'card.md'} (gate: data.leakage == 0)",
            highlight=False,
        )


def _print_card(card: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"dataset {card['hash']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for s in card["sources"]:
        table.add_row(f"source {s['name']}", f"{s['rows_kept']} / {s['rows']} kept ({s['share']:.0%} of data)")
    table.add_row("rows in", str(card["rows_in"]))
    for reason, n in card["dropped"].items():
        if n:
            table.add_row(f"dropped: {reason.replace('_', ' ')}", str(n))
    table.add_row("truncated", str(card["truncated"]))
    if card["pii_enabled"]:
        found = ", ".join(f"{k} {v}" for k, v in card["pii_counts"].items() if v) or "none"
        table.add_row("PII replaced", found)
    table.add_row("rows kept", f"[bold]{card['rows_kept']}[/]")
    table.add_row("train / eval", f"{card['train_rows']} / {card['eval_rows']}")
    if card.get("eval_split"):
        table.add_row("eval split", card["eval_split"]["description"])
    if card.get("leakage"):
        leak = card["leakage"]
        colour = "red" if leak["count"] else "green"
        table.add_row("eval rows leaked from train", f"[{colour}]{leak['count']}[/] ({leak['exact']} exact)")
    for origin, share in (card.get("mix") or {}).get("achieved", {}).items():
        planned = card["mix"]["planned"][origin]
        if share or planned:
            table.add_row(f"mix {origin}", f"{share:.0%} achieved / {planned:.0%} planned")
    t = card["token_lengths"]
    table.add_row("tokens p50 / p95 / max", f"{t['p50']:g} / {t['p95']:g} / {t['max']}")
    console.print(table)


@app.command("raft")
def raft(
    config: Path = options.CONFIG,
    index: Annotated[Path | None, typer.Option("--index", help="Index folder (default: raft.index, then "
                                               "rag.index_dir).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Training rows (default: raft.output).")] = None,
    heldout: Annotated[Path | None, typer.Option("--heldout", help="Held-out rows (default: "
                                                 "raft.heldout_output).")] = None,
    json_out: bool = options.JSON,
) -> None:
    """Retrieval-augmented fine-tuning rows from an index you built: questions about its chunks in the
    `tailor rag ask` prompt (oracle passage among distractors of the same tenant and audience, answer cited;
    a share with the oracle removed, declined), split by document into train and held-out."""
    from llmtailor.config import load_config
    from llmtailor.data.raft import run_raft

    cfg = load_config(config)
    result = run_raft(cfg, index=index, output=out, heldout=heldout)
    if json_out:
        emit_json(result.as_dict())
        return
    r, d = result.rows, result.documents
    console.print(f"[green]{r['train_answerable'] + r['train_unanswerable']}[/] training rows "
                  f"({r['train_unanswerable']} to decline) from {d['train']} documents: {result.output}")
    console.print(f"{r['heldout_answerable'] + r['heldout_unanswerable']} held-out rows "
                  f"({r['heldout_unanswerable']} to decline) from {d['heldout']} other documents: "
                  f"{result.heldout_output}", highlight=False)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.questions.items()))
    console.print(f"questions from {result.questions_from}: {kinds}", highlight=False)
    for reason, n in sorted(result.skipped.items()):
        console.print(f"  [yellow]{reason.replace('_', ' ')}: {n}[/]")
    console.print("next: add the training file to data.sources with `origin: synthetic`, then `tailor train`; "
                  "serve the run as a RAG alias (tuned+RAG)")
