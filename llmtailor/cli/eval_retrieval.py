"""`tailor eval retrieval`: hit rate, recall, MRR, nDCG and latency of dense, sparse and hybrid search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmtailor.cli import options
from llmtailor.cli.output import console, emit_json


def retrieval(
    index: Annotated[
        Path | None, typer.Option("--index", "-i", help="Index folder (BEIR: built/updated here).")
    ] = None,
    beir: Annotated[
        Path | None, typer.Option("--beir", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv.")
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option("--questions", help="Your own JSONL: {\"question\", \"relevant\": [source paths]} per line."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="tailor.yaml (default: ./tailor.yaml if present).")
    ] = None,
    modes: Annotated[
        str, typer.Option("--modes", help="Comma-separated: dense, sparse, hybrid.")
    ] = "dense,sparse,hybrid",
    ks: Annotated[str, typer.Option("--k", help="Cut-offs for hit rate and recall, comma-separated.")] = "1,3,5,10",
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N queries.")] = None,
    split: Annotated[str, typer.Option("--split", help="BEIR qrels split.")] = "test",
    embedding: Annotated[
        str | None, typer.Option("--embedding", help="Embedding model for a new BEIR index (overrides config).")
    ] = None,
    json_out: bool = options.JSON,
) -> None:
    """Score retrieval on a BEIR set (ingested into --index) or on your own question -> source list."""
    from llmtailor.cli.rag import load_rag_config, resolve_index
    from llmtailor.errors import TailorError
    from llmtailor.rag.retrieval_eval import run_beir, run_questions

    if (beir is None) == (questions is None):
        raise TailorError("give exactly one of --beir FOLDER or --questions FILE.jsonl")
    rag, base_dir = load_rag_config(config)
    if embedding:
        rag = rag.model_copy(update={"embedding": rag.embedding.model_copy(update={"model": embedding})})
    folder = resolve_index(index, rag, base_dir)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    try:
        k_list = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise TailorError(f"--k must be comma-separated integers, got {ks!r}") from None
    progress = None
    bar = None
    if not json_out:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console)
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done, total=total or None)

        bar.start()
    try:
        if beir is not None:
            report = run_beir(beir, folder, rag, modes=mode_list, ks=k_list, limit=limit, split=split,
                              progress=progress)
        else:
            report = run_questions(questions, folder, rag, modes=mode_list, ks=k_list, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    if json_out:
        emit_json(report)
        return
    _print(report, sorted(set(k_list) | {10}))


def _print(report: dict, ks: list[int]) -> None:
    from rich.table import Table

    t = Table(title=f"Retrieval quality ({report['queries']} queries)")
    t.add_column("metric")
    modes = list(report["modes"])
    for m in modes:
        t.add_column(m, justify="right")
    names = [f"hit_rate@{k}" for k in ks] + [f"recall@{k}" for k in ks] + ["mrr@10", "ndcg@10"]
    for name in names:
        t.add_row(name, *[f"{report['modes'][m].get(name, 0):.3f}" for m in modes])
    t.add_row("latency p50 ms", *[f"{report['modes'][m]['latency_ms']['p50']:.1f}" for m in modes])
    t.add_row("latency p95 ms", *[f"{report['modes'][m]['latency_ms']['p95']:.1f}" for m in modes])
    t.add_row("  embedding p50 ms", *[f"{report['modes'][m]['latency_ms']['embed_p50']:.1f}" for m in modes])
    console.print(t)
    if report.get("unmatched_relevant"):
        console.print(f"[yellow]relevant sources not in the index:[/] {', '.join(report['unmatched_relevant'])}",
                      markup=True, highlight=False)
