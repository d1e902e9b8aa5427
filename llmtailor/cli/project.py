"""`tailor init`, `tailor run` and `tailor config`: the project file and the whole loop."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import typer

from llmtailor.cli.options import CONFIG, JSON
from llmtailor.cli.output import console, emit_json
from llmtailor.errors import TailorError

config_app = typer.Typer(no_args_is_help=True)

DEMO_FILES = {"tailor.yaml": "tailor.yaml", "tickets.jsonl": "data/tickets.jsonl",
              "ticket.schema.json": "ticket.schema.json"}
_CHAT_RAG_DOCS = ("account", "billing", "returns", "security", "shipping")
# template -> {packaged file under assets/: path in the project}
TEMPLATES: dict[str, dict[str, str]] = {
    "demo": {f"demo/{src}": dst for src, dst in DEMO_FILES.items()},
    "classify": {"templates/classify/tailor.yaml": "tailor.yaml",
                 "templates/classify/tickets.jsonl": "data/tickets.jsonl"},
    "extract": {"templates/extract/tailor.yaml": "tailor.yaml", "templates/extract/tickets.jsonl": "data/tickets.jsonl",
                "templates/extract/extract.schema.json": "extract.schema.json"},
    "chat-rag": {"templates/chat-rag/tailor.yaml": "tailor.yaml",
                 "templates/chat-rag/support_chat.jsonl": "data/support_chat.jsonl",
                 **{f"templates/chat-rag/docs/{d}.md": f"docs/{d}.md" for d in _CHAT_RAG_DOCS}},
    "distill": {"templates/distill/tailor.yaml": "tailor.yaml", "demo/tickets.jsonl": "data/tickets.jsonl",
                "demo/ticket.schema.json": "ticket.schema.json"},
}


def init(
    directory: Path = typer.Argument(..., help="Folder to create the project in."),
    force: bool = typer.Option(False, "--force", help="Overwrite the project files (tailor.yaml, data/tickets.jsonl, "
                               "ticket.schema.json) if they already exist there."),
    json_out: bool = JSON,
    template: str = typer.Option("demo", "--template", "-t", help="demo (ticket triage to JSON), classify, extract, "
                                 "chat-rag or distill; each runs on a 2-core CPU."),
) -> None:
    """Write a project from a template; the default demo is support-ticket triage to JSON, with bad rows,
    duplicates and PII to clean (classify, extract, chat-rag and distill: see docs/adapt.md).

    Refuses, writing nothing, when any of its files already exists (your data, your config) unless --force.
    """
    if template not in TEMPLATES:
        raise typer.BadParameter(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}",
                                 param_hint="--template")
    targets = {src: directory / dst for src, dst in TEMPLATES[template].items()}
    folders = [p for p in targets.values() if p.is_dir()]
    if folders:
        raise TailorError(f"{', '.join(map(str, folders))}: is a folder where `tailor init` writes a file; "
                          "nothing was written")
    existing = [p for p in targets.values() if p.exists() or p.is_symlink()]
    if existing and not force:
        verb = "already exists" if len(existing) == 1 else "already exist"
        raise TailorError(f"{', '.join(map(str, existing))}: {verb}; nothing was written (use --force to "
                          "overwrite)")
    _write_demo(targets, replace=force)
    written = [str(p) for p in targets.values()]
    target = directory / "tailor.yaml"
    if json_out:
        emit_json({"project": str(directory), "files": written})
    else:
        console.print(f"[green]created[/] {directory}: " + ", ".join(TEMPLATES[template].values()))
        console.print(f"next: [bold]tailor run -c {target}[/]")


def _write_demo(targets: dict[str, Path], *, replace: bool) -> None:
    """Copy the packaged demo files: all staged as temporary files first, then put in place.

    Without `replace`, each file is linked into place (which fails if the name exists), so a file that appeared
    since the check above is not clobbered either; the files this call already placed are then removed again.
    """
    demo = resources.files("llmtailor") / "assets"
    staged: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for src, out in targets.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            with resources.as_file(demo / src) as f:
                shutil.copyfile(f, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            staged.append((Path(tmp), out))
        for tmp, out in staged:
            if replace:
                os.replace(tmp, out)
            else:
                try:
                    os.link(tmp, out)
                except FileExistsError:
                    raise TailorError(f"{out}: already exists; nothing was written (use --force to overwrite)") \
                        from None
                except OSError:  # a filesystem without hard links: the check above has to do
                    if out.exists():
                        raise TailorError(f"{out}: already exists; nothing was written (use --force to "
                                          "overwrite)") from None
                    os.replace(tmp, out)
            placed.append(out)
    except BaseException:
        if not replace:
            for out in placed:
                out.unlink(missing_ok=True)
        raise
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def run(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """prepare -> train -> eval -> report, printing where the report is."""
    from llmtailor.cli.eval import print_metrics
    from llmtailor.pipeline import run_all

    result = run_all(config, show_progress=True, say=console.print)
    if json_out:
        emit_json(result.as_dict())
        return
    print_metrics(result.metrics)
    console.print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.stage_seconds.items()))
    console.print(f"[bold green]report:[/] {result.report}")


@config_app.command("show")
def show(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Print the resolved config, defaults filled in and paths made absolute."""
    from llmtailor.config import load_config

    cfg = load_config(config)
    if json_out:
        emit_json(json.loads(cfg.model_dump_json()))
    else:
        print(cfg.to_yaml(), end="")


@config_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of tailor.yaml (for editor completion and validation)."""
    from llmtailor.config import json_schema

    print(json.dumps(json_schema(), indent=2))


@config_app.command("validate")
def validate(config: Path = CONFIG, json_out: bool = JSON) -> None:
    """Check a tailor.yaml without running anything."""
    from llmtailor.config import load_config

    load_config(config)
    if json_out:
        emit_json({"config": str(config), "ok": True})
    else:
        console.print(f"[green]ok[/] {config}")
