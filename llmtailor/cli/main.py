"""`tailor`: the command-line entry point. Sub-commands import their heavy libraries only when run."""

from __future__ import annotations

import os
import signal
import sys

import typer

from llmtailor import __version__
from llmtailor.cli import advise as advise_cmd
from llmtailor.cli import chat as chat_cmd
from llmtailor.cli import data as data_cmd
from llmtailor.cli import distill as distill_cmd
from llmtailor.cli import eval as eval_cmd
from llmtailor.cli import eval_retrieval as eval_retrieval_cmd
from llmtailor.cli import export as export_cmd
from llmtailor.cli import keys as keys_cmd
from llmtailor.cli import merge as merge_cmd
from llmtailor.cli import monitor as monitor_cmd
from llmtailor.cli import prefs as prefs_cmd
from llmtailor.cli import project as project_cmd
from llmtailor.cli import promote as promote_cmd
from llmtailor.cli import rag as rag_cmd
from llmtailor.cli import registry as registry_cmd
from llmtailor.cli import serve as serve_cmd
from llmtailor.cli import synth as synth_cmd
from llmtailor.cli import train as train_cmd
from llmtailor.cli import ui as ui_cmd

app = typer.Typer(
    name="tailor",
    help="Tailor an open-weight LLM into your company's assistant: data, train, eval, report; one YAML file.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmd.app, name="data", help="Validate and prepare chat datasets (versions + data card).")
data_cmd.app.command("preferences", help="Build preference pairs from a model's sampled answers, ranked by rule.")(
    prefs_cmd.preferences
)
data_cmd.app.command("check-preferences", help="Check every row of a preference JSONL; exit 1 on any bad row.")(
    prefs_cmd.check_preferences
)
data_cmd.app.command("synth", help="Evolve the training rows into synthetic ones (Evol-Instruct), resumable.")(
    synth_cmd.synth
)
app.add_typer(project_cmd.config_app, name="config", help="Show the resolved config or its JSON Schema.")
app.add_typer(eval_cmd.app, name="eval", help="Evaluate the adaptation ladder on the held-out split; --gate for CI.")
app.command("advise", help="Recommend which adaptation to ship, from the latest ladder.")(advise_cmd.advise)
eval_cmd.app.command("retrieval", help="Hit rate, MRR, nDCG and latency of dense/sparse/hybrid retrieval.")(
    eval_retrieval_cmd.retrieval
)
app.add_typer(rag_cmd.app, name="rag", help="Ingest documents, search them with access control, answer with citations.")
app.command("train", help="Fine-tune the base model (LoRA, DoRA, QLoRA or full).")(train_cmd.train)
app.command("distill", help="Distil a teacher (local, a run's adapter, or an endpoint) into the base model.")(
    distill_cmd.distill
)
app.command("run", help="Run the whole loop: prepare -> train -> eval -> report.")(project_cmd.run)
app.command("init", help="Write a ready project into DIR: the demo, or --template classify|extract|chat-rag|distill.")(
    project_cmd.init
)
app.command("report", help="Write the self-contained HTML report of a run.")(eval_cmd.report)
app.command("chat", help="Chat with the base or a tuned model in the terminal.")(chat_cmd.chat)
app.command("serve", help="OpenAI-compatible server: base, adapters, RAG aliases, keys, metrics.")(serve_cmd.serve)
app.command("export", help="A run as a GGUF LoRA adapter or merged GGUF (llama.cpp, Ollama).")(export_cmd.export)
app.add_typer(keys_cmd.app, name="keys", help="Create, list and revoke API keys (tenant, groups, models).")
app.add_typer(registry_cmd.app, name="registry", help="Datasets, runs, adapters, evaluations, deployments, lineage.")
app.command("merge", help="Merge adapters of one base (linear, TIES, DARE, cat), or an adapter into the base.")(
    merge_cmd.merge
)
app.command("promote", help="Deploy an adapter to staging/production (or as a canary).")(promote_cmd.promote)
app.command("rollback", help="Return a stage to its previous deployment.")(promote_cmd.rollback)
app.command("monitor", help="Drift, feedback and guardrail rates of production; --export-dataset.")(
    monitor_cmd.monitor
)
app.command("ui", help="The workbench: a local web UI for runs, registry, data, playground and retrieval.")(ui_cmd.ui)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """llmtailor."""


# Servers run for days and their load comes and goes: they keep the allocator's defaults, which hand memory back.
LONG_LIVED = {"serve", "ui"}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry: user errors print one clear line and exit 1, never a traceback."""
    from llmtailor.errors import TailorError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not os.environ.get("LLMTAILOR_DEBUG"):
        import warnings

        # Libraries' deprecation notices are for their own API users, not for people running `tailor`.
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    if not set(sys.argv[1:2]) & LONG_LIVED:
        from llmtailor.cpu_memory import tune

        tune()  # before torch loads; training steps reuse their freed activations (see cpu_memory.py)
    # A `kill` (SIGTERM) stops training the same way Ctrl-C does: the run is marked interrupted, resumable.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        app()
    except TailorError as e:
        from rich.markup import escape

        from llmtailor.cli.output import console

        # escape: messages carry brackets that are not markup (pip extras like llmtailor[llamacpp], JSON paths).
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        from llmtailor.cli.output import console

        console.print("[yellow]interrupted[/]: partial results were kept; `tailor train --resume` continues training")
        sys.exit(130)


if __name__ == "__main__":
    main()
