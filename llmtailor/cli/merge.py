"""`tailor merge`: combine adapters of one base into a new adapter run, or merge an adapter into the base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmtailor.cli import options
from llmtailor.cli.output import console, emit_json


def merge(
    adapters: Annotated[list[str], typer.Option("--adapters", "-a", help="Runs (id or folder) or adapter folders; "
                                                "repeat the option or list them after it.")],
    extra: Annotated[list[str] | None, typer.Argument(help="More adapters (so `--adapters A B` works).",
                                                      show_default=False)] = None,
    config: Path = options.CONFIG,
    method: Annotated[str | None, typer.Option("--method", help="linear, ties, dare_ties, dare_linear, cat or svd "
                                               "(default: merge.method).")] = None,
    weights: Annotated[list[str] | None, typer.Option("--weights", help="One weight per adapter: --weights 0.5,0.5 "
                                                      "(or repeated: --weights 0.5 --weights 0.5).")] = None,
    density: Annotated[float | None, typer.Option("--density", help="ties/dare: share of entries kept.")] = None,
    into_base: Annotated[bool, typer.Option("--into-base", "--full", help="Merge into the base and write a full "
                                            "model folder (safetensors + tokenizer + chat template).")] = False,
    name: Annotated[str | None, typer.Option("--name", help="A name recorded in run.json.")] = None,
    json_out: bool = options.JSON,
) -> None:
    """Merge adapters of the same base; the result is a new run folder, registered with lineage to its parents."""
    from llmtailor.config import load_config
    from llmtailor.merge.adapters import merge as do_merge
    from llmtailor.registry.hooks import record_training

    methods = ("linear", "ties", "dare_ties", "dare_linear", "cat", "svd")
    if method is not None and method not in methods:
        raise typer.BadParameter(f"must be one of {', '.join(methods)}", param_hint="--method")
    cfg = load_config(config)
    refs = [*adapters, *(extra or [])]
    wts = None
    if weights:
        try:
            wts = [float(x) for item in weights for x in item.replace(",", " ").split()]
        except ValueError:
            raise typer.BadParameter("numbers, one per adapter (0.5,0.5)", param_hint="--weights") from None
    result = do_merge(cfg, refs, method=method, weights=wts, density=density, into_base=into_base, name=name,
                      say=(lambda msg: None) if json_out else console.print)
    record_training(cfg, result.run_dir)
    if json_out:
        emit_json(result.as_dict())
        return
    what = "a full model" if into_base else "an adapter"
    console.print(f"[green]merged[/] {len(result.parents)} adapter(s) into {what}: {result.output_dir}")
    console.print(f"run folder: {result.run_dir} (evaluate: `tailor eval -c {config} --run {result.run_dir.name}`)")
