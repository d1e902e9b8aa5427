"""`tailor rag`: ingest documents into an index, search it, answer with citations, show its version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmtailor.cli import options
from llmtailor.cli.output import console, emit_json

if TYPE_CHECKING:
    from llmtailor.rag.config import RagConfig

app = typer.Typer(
    help="Retrieval: ingest PDF/DOCX/HTML/Markdown/text into a local index, search it with access control, "
    "and answer questions with cited sources.",
    no_args_is_help=True,
)

INDEX = typer.Option("--index", "-i", help="Index folder (default: rag.index_dir from tailor.yaml).")
CONFIG = typer.Option("-c", "--config", help="tailor.yaml (default: ./tailor.yaml if present, else defaults).")
TENANT = typer.Option("--tenant", help="Tenant; without it only chunks ingested without a tenant are visible.")
GROUPS = typer.Option("--groups", help="Comma-separated groups the caller belongs to.")
LEVEL = typer.Option("--access-level", help="Clearance: public, internal, confidential, restricted (or 0-3).")
WHERE = typer.Option("--where", help="Extra filter, e.g. \"category = 'hr' AND date >= '2025-01-01'\".")
MODE = typer.Option("--mode", help="dense, sparse or hybrid (default: rag.search.mode).")


def load_rag_config(config: Path | None) -> tuple[RagConfig, Path | None]:
    """The rag section of tailor.yaml (defaults when there is none) and the folder relative paths resolve in."""
    from llmtailor.rag.config import RagConfig

    path = config if config is not None else (Path("tailor.yaml") if Path("tailor.yaml").exists() else None)
    if path is None:
        return RagConfig(), None
    from llmtailor.config import load_config

    cfg = load_config(path)
    rag = getattr(cfg, "rag", None)
    return (rag if rag is not None else RagConfig()), cfg.base_dir


def resolve_index(index: Path | None, rag: RagConfig, base_dir: Path | None) -> Path:
    """--index, else rag.index_dir (relative to tailor.yaml)."""
    if index is not None:
        return index
    folder = rag.index_dir
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    return folder


def _progress_callback(enabled: bool):
    """A rich progress bar fed by the ingest's (stage, done, total) callback."""
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=False)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"Ingesting {stage}", total=total or None)
        bar.update(tasks[stage], completed=done, total=total or None)

    return bar, update


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")],
    index: Annotated[Path | None, INDEX] = None,
    config: Annotated[Path | None, CONFIG] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant of these documents.")] = None,
    access_level: Annotated[
        str | None, typer.Option("--access-level", help="public, internal, confidential, restricted (or 0-3).")
    ] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="Comma-separated groups allowed to read.")] = None,
    category: Annotated[str | None, typer.Option("--category", help="Category, filterable with --where.")] = None,
    date: Annotated[str | None, typer.Option("--date", help="Document date YYYY-MM-DD.")] = None,
    embedding: Annotated[
        str | None, typer.Option("--embedding", help="Embedding model (overrides rag.embedding.model).")
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Delete the index and build it from scratch.")] = False,
    skip_errors: Annotated[
        bool, typer.Option("--skip-errors", help="Exit 0 even when some files were skipped.")
    ] = False,
    json_out: bool = options.JSON,
) -> None:
    """Index files incrementally: only new or changed files are embedded; deleted files leave the index."""
    from llmtailor.errors import TailorError
    from llmtailor.rag.acl import parse_groups, parse_level
    from llmtailor.rag.ingest import ingest as run_ingest
    from llmtailor.rag.meta import DocMeta, normalize_date

    rag, base_dir = load_rag_config(config)
    if embedding:
        rag = rag.model_copy(update={"embedding": rag.embedding.model_copy(update={"model": embedding})})
    folder = resolve_index(index, rag, base_dir)
    try:
        when = normalize_date(date, "--date") if date else None
    except ValueError as e:
        raise TailorError(str(e)) from None
    defaults = DocMeta(
        tenant=tenant.strip() if tenant is not None else None,
        access_level=parse_level(access_level) if access_level is not None else None,
        groups=parse_groups(groups) if groups is not None else None,
        category=category,
        date=when,
    )
    bar, update = _progress_callback(not json_out)
    if bar is not None:
        bar.start()
    try:
        report = run_ingest(paths, folder, rag, defaults=defaults, rebuild=rebuild, progress=update,
                            base_dir=base_dir)
    finally:
        if bar is not None:
            bar.stop()
    _record_index(config, folder)
    if json_out:
        emit_json(report.as_dict())
    else:
        _print_ingest(report)
    if report.skipped and not skip_errors:
        raise typer.Exit(1)


def _record_index(config: Path | None, folder: Path) -> None:
    """With a project config (tailor.yaml), register the index version just built, like prepare and train register
    theirs; without one there is no project registry to write to. A registry outage only warns."""
    path = config if config is not None else (Path("tailor.yaml") if Path("tailor.yaml").exists() else None)
    if path is None:
        return
    from llmtailor.config import load_config
    from llmtailor.registry.hooks import record_index

    record_index(load_config(path), folder)


def _print_ingest(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"Index {report.index_dir}", show_header=False)
    rows = [
        ("files", f"{report.files_seen} seen: {report.files_new} new, {report.files_changed} changed, "
                  f"{report.files_unchanged} unchanged, {report.files_deleted} deleted, {len(report.skipped)} skipped"),
        ("chunks", f"{report.chunks_written} written ({report.embedded} embedded, {report.reused_vectors} reused "
                   f"vectors), {report.chunks_deleted} removed, {report.chunks_total} in the index"),
        ("time", f"{report.seconds:.1f} s ({report.chunks_per_second:.0f} chunks/s, embedding "
                 f"{report.embed_seconds:.1f} s)"),
        ("version", f"{report.version} (content {report.content_hash})"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {escape(s.file)}: {escape(s.reason)}", highlight=False, soft_wrap=True)


def _caller(tenant: str | None, groups: str | None, level: str | None):
    from llmtailor.rag.acl import Caller

    return Caller.of(tenant, groups, level)


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="What to search for.")],
    index: Annotated[Path | None, INDEX] = None,
    config: Annotated[Path | None, CONFIG] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Results (default: rag.search.top_k).")] = None,
    tenant: Annotated[str | None, TENANT] = None,
    groups: Annotated[str | None, GROUPS] = None,
    access_level: Annotated[str | None, LEVEL] = None,
    where: Annotated[str | None, WHERE] = None,
    mode: Annotated[str | None, MODE] = None,
    mmr: Annotated[bool | None, typer.Option("--mmr/--no-mmr", help="Diversify results (MMR).")] = None,
    rewrite: Annotated[
        bool | None,
        typer.Option("--rewrite/--no-rewrite", help="Multi-query: the LLM rephrases the query, results fused."),
    ] = None,
    json_out: bool = options.JSON,
) -> None:
    """Search the index; only chunks the caller may see are candidates (filter inside the store query)."""
    from llmtailor.rag.search import Retriever

    rag, base_dir = load_rag_config(config)
    folder = resolve_index(index, rag, base_dir)
    use_rewrite = rag.search.rewrite if rewrite is None else rewrite
    if use_rewrite:
        # Rewriting needs the LLM: the assistant owns it (loaded lazily) and plugs itself in as the rewriter.
        from llmtailor.rag.answer import RagAssistant

        path = config if config is not None else (Path("tailor.yaml") if Path("tailor.yaml").exists() else None)
        assistant = RagAssistant.load(path, index=folder, rag=rag)
        retriever, closer = assistant.retriever, assistant.close
    else:
        retriever = Retriever.open(folder, rag, base_dir=base_dir)
        closer = retriever.close
    try:
        result = retriever.search(text, caller=_caller(tenant, groups, access_level), where=where, mode=mode,
                                  top_k=top_k, use_mmr=mmr, rewrite=use_rewrite)
    finally:
        closer()
    if json_out:
        emit_json(result.as_dict())
        return
    if not result.hits:
        console.print("[yellow]no results[/] (nothing visible to this caller matches)")
        return
    from rich.table import Table

    t = Table(title=f"{result.mode} search: {text!r}  ({result.timings.get('total_ms', 0):.0f} ms)")
    for col in ("#", "score", "source", "page", "section", "text"):
        t.add_column(col, overflow="fold")
    for i, h in enumerate(result.hits, start=1):
        c = h.chunk
        snippet = " ".join(c.text.split())[:160]
        t.add_row(str(i), f"{h.score:.4f}", _short(c.source), str(c.page or ""), c.heading_path, snippet)
    console.print(t)


def _short(source: str) -> str:
    try:
        return str(Path(source).relative_to(Path.cwd()))
    except ValueError:
        return source


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    index: Annotated[Path | None, INDEX] = None,
    config: Annotated[Path | None, CONFIG] = None,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="A tuned adapter (or full model) folder; default: base model.")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Passages in the prompt.")] = None,
    tenant: Annotated[str | None, TENANT] = None,
    groups: Annotated[str | None, GROUPS] = None,
    access_level: Annotated[str | None, LEVEL] = None,
    where: Annotated[str | None, WHERE] = None,
    mode: Annotated[str | None, MODE] = None,
    json_out: bool = options.JSON,
) -> None:
    """Answer from the indexed documents with numbered citations, or say it does not know."""
    from llmtailor.rag.answer import RagAssistant

    path = config if config is not None else (Path("tailor.yaml") if Path("tailor.yaml").exists() else None)
    assistant = RagAssistant.load(path, index=index, adapter=adapter)
    try:
        if not json_out:
            with console.status("Retrieving and generating..."):
                ans = assistant.ask(question, caller=_caller(tenant, groups, access_level), where=where, mode=mode,
                                    top_k=top_k)
        else:
            ans = assistant.ask(question, caller=_caller(tenant, groups, access_level), where=where, mode=mode,
                                top_k=top_k)
    finally:
        assistant.close()
    if json_out:
        emit_json(ans.as_dict())
        return
    console.print(ans.answer, markup=False, highlight=False, soft_wrap=True)
    if ans.citations:
        console.print("\n[bold]Sources[/]")
        for c in ans.citations:
            console.print(f"[{c.number}] {c.label()}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def status(
    index: Annotated[Path | None, INDEX] = None,
    config: Annotated[Path | None, CONFIG] = None,
    json_out: bool = options.JSON,
) -> None:
    """Show the index version (content hash, embedding model, chunking) and its size."""
    from llmtailor.errors import TailorError
    from llmtailor.rag.index import Index

    rag, base_dir = load_rag_config(config)
    folder = resolve_index(index, rag, base_dir)
    info = Index.read_info(folder)
    if info is None:
        raise TailorError(f"{folder}: index not found; build it with `tailor rag ingest PATH --index {folder}`")
    if json_out:
        emit_json(info)
        return
    console.print(f"[bold]{folder}[/]  version {info.get('version')}  built {info.get('built_at')}")
    console.print(
        f"  {info.get('chunks')} chunks from {info.get('sources')} sources; content {info.get('content_hash')}"
    )
    emb = info["embedding"]
    console.print(f"  embedding {emb['model']} ({emb['fingerprint']}, {emb['dim']} dims); backend "
                  f"{info['store']['backend']}; chunking {info['chunking']}")


@app.command()
def delete(
    targets: Annotated[list[str], typer.Argument(help="Files or folders as ingested, or a stored source "
                                                      "(record:<id>).")],
    index: Annotated[Path | None, INDEX] = None,
    config: Annotated[Path | None, CONFIG] = None,
    json_out: bool = options.JSON,
) -> None:
    """Remove documents from the index (the files stay on disk); a running server stops citing them at once."""
    from llmtailor.rag.index import delete_sources

    rag, base_dir = load_rag_config(config)
    folder = resolve_index(index, rag, base_dir)
    out = delete_sources(folder, targets, rag, base_dir=base_dir)
    _record_index(config, folder)  # a new index version, registered like an ingest's
    if json_out:
        emit_json(out)
        return
    console.print(f"[green]deleted[/] {len(out['deleted'])} document(s), {out['chunks_deleted']} chunks; "
                  f"{folder} is now version {out['version']} ({out['chunks_total']} chunks)")
