"""`tailor export` for one run of a project: pick the run's adapter, export it, write the Modelfile, register it.

Every refusal (format, quantization name, llama-cpp-python missing, adapter kind, base) happens before the slow part,
and files are written through a temp file and a rename, so a refusal or an interruption leaves nothing half-written.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.export.quant import UNQUANTIZED, check_quant, require_llama_cpp

FORMATS = ("gguf", "ollama")


@dataclass
class ExportResult:
    """What `tailor export` wrote."""

    run_id: str
    format: str
    merged: bool
    quant: str
    path: str
    size_mb: float
    seconds: float
    base_gguf: str
    modelfile: str | None = None
    registry_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_model_dir(run_dir: Path) -> tuple[Path, bool]:
    """(the run's adapter or full-model folder, whether it is a full model)."""
    if (run_dir / "adapter" / "adapter_config.json").exists():
        return run_dir / "adapter", False
    if (run_dir / "model" / "config.json").exists():
        return run_dir / "model", True
    raise TailorError(f"{run_dir}: no adapter/ or model/ folder; did training finish?")


def check_request(fmt: str, merge: bool, quant: str | None) -> str:
    """The quantization to use, after refusing a bad format/quant combination (fast, before any loading)."""
    if fmt not in FORMATS:
        raise TailorError(f"unknown export format '{fmt}': use {' or '.join(FORMATS)}")
    q = check_quant(quant) if quant else ("f16" if merge else "f32")
    if not merge and q not in UNQUANTIZED:
        raise TailorError(f"--quant {q} quantizes a merged model: add --merge. A LoRA adapter GGUF is f32 or f16 and "
                          "rides on the base GGUF's own quantization.")
    if q not in UNQUANTIZED:
        require_llama_cpp(f"--quant {q}")
    return q


def export_run(cfg: Any, run_dir: Path, *, fmt: str = "gguf", merge: bool = False, quant: str | None = None,
               out: Path | None = None, register: bool = True) -> ExportResult:
    """Export a run's adapter (or merged model) into `out` (default: <run>/export) and register the file."""
    from llmtailor.export.gguf import base_gguf, export_adapter_gguf, export_merged_gguf, file_size_mb, read_base
    from llmtailor.export.ollama import write_modelfile

    q = check_request(fmt, merge, quant)
    source, full = _run_model_dir(run_dir)
    if full and not merge:
        raise TailorError(f"run {run_dir.name} is a full fine-tune (no LoRA adapter): export it with --merge")
    base = base_gguf(cfg.model)
    info = read_base(base)
    out_dir = Path(out) if out else run_dir / "export"
    started = time.perf_counter()
    if merge:
        path = export_merged_gguf(source, cfg.model, out_dir / f"model-{q}.gguf", q, base=base)
    else:
        path = export_adapter_gguf(source, base, out_dir / f"adapter-{q}.gguf", dtype=q)
    modelfile = None
    if fmt == "ollama":
        modelfile = write_modelfile(out_dir, model=path if merge else base, adapter=None if merge else path,
                                    chat_template=info.chat_template, system=cfg.data.system_prompt,
                                    temperature=cfg.serve.default_temperature)
    result = ExportResult(run_id=run_dir.name, format=fmt, merged=merge, quant=q, path=str(path),
                          size_mb=file_size_mb(path), seconds=round(time.perf_counter() - started, 1),
                          base_gguf=str(base), modelfile=str(modelfile) if modelfile else None)
    if register:
        result.registry_id = _register(cfg, run_dir, result)
    return result


def _register(cfg: Any, run_dir: Path, result: ExportResult) -> str | None:
    """Record the export with lineage to the run's adapter; a registry outage only warns (the file is written)."""
    if not cfg.registry.enabled:
        return None
    try:
        from llmtailor.registry.db import Registry
        from llmtailor.registry.hooks import sync_run

        reg = Registry.for_config(cfg)
        try:
            if reg.adapter(run_dir.name) is None:
                sync_run(reg, run_dir)  # a run made while the registry was unavailable
            info = {k: v for k, v in result.as_dict().items() if k not in ("path", "format", "quant", "registry_id")}
            return reg.record_export(run_dir.name, Path(result.path), result.format, result.quant, info)
        finally:
            reg.close()
    except Exception as e:  # the export itself succeeded
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]warning:[/] registry: could not record the export: {e}",
                                   highlight=False)
        return None
