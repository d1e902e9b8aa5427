"""Small functions the pipeline calls after each stage to register what it produced.

A registry problem (locked or corrupt file, database down) must never fail a training run that already
finished: each hook prints one warning on stderr, naming the fix, and returns None.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.runs import read_run


def _warn(what: str, e: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]warning:[/] registry: could not record {what}: {e}. The stage itself "
                               "succeeded; register it later with `tailor registry sync`.", highlight=False)


def _open(cfg: Any) -> Any:
    from llmtailor.registry.db import Registry

    if not cfg.registry.enabled:
        return None
    return Registry.for_config(cfg)


def sync_run(registry: Any, run_dir: Path) -> dict[str, str]:
    """Register a run folder: its dataset, the run, its adapter and its evaluation (idempotent except evals)."""
    info = read_run(run_dir)
    if not info:
        raise TailorError(f"{run_dir}: not a run folder (no run.json)")
    out = {"run": registry.record_run(run_dir, info)}
    adapter_dir = info.get("adapter_dir")
    if adapter_dir and Path(adapter_dir).exists():
        out["adapter"] = registry.record_adapter(out["run"], Path(adapter_dir), info.get("method"),
                                                 info.get("base_model"))
    results = run_dir / "eval" / "results.json"
    if results.exists() and "adapter" in out and registry.latest_evaluation(out["adapter"]) is None:
        out["evaluation"] = registry.record_evaluation(out["run"], results,
                                                       json.loads(results.read_text(encoding="utf-8")))
    return out


def record_dataset(cfg: Any, version: Any) -> str | None:
    """After `prepare`: the dataset version (hash, folder, card)."""
    try:
        reg = _open(cfg)
        if reg is None:
            return None
        try:
            return reg.record_dataset(version.hash, version.path, version.card)
        finally:
            reg.close()
    except Exception as e:  # a registry outage must not fail the stage
        _warn(f"dataset {getattr(version, 'hash', '?')}", e)
        return None


def record_training(cfg: Any, run_dir: Path) -> dict[str, str] | None:
    """After `train`: the run (config, code version, metrics) and its adapter."""
    try:
        reg = _open(cfg)
        if reg is None:
            return None
        try:
            return sync_run(reg, run_dir)
        finally:
            reg.close()
    except Exception as e:
        _warn(f"run {run_dir.name}", e)
        return None


def record_evaluation(cfg: Any, run_dir: Path) -> str | None:
    """After `eval`: metrics and gate results, linked to the run's adapter."""
    try:
        reg = _open(cfg)
        if reg is None:
            return None
        try:
            ids = sync_run(reg, run_dir)  # the run may predate the registry
            results = run_dir / "eval" / "results.json"
            if "evaluation" in ids or not results.exists():
                return ids.get("evaluation")
            return reg.record_evaluation(ids["run"], results, json.loads(results.read_text(encoding="utf-8")))
        finally:
            reg.close()
    except Exception as e:
        _warn(f"evaluation of {run_dir.name}", e)
        return None


def record_index(cfg: Any, index_dir: Path) -> str | None:
    """After `rag ingest`: the index version it left (name, folder, version, document and chunk counts, embedder),
    read from the index's own index.json so the registry records what is on disk."""
    try:
        from llmtailor.rag.index import Index

        info = Index.read_info(index_dir)
        if not info or not info.get("version"):
            return None
        reg = _open(cfg)
        if reg is None:
            return None
        keep = ("version", "content_hash", "chunks", "embedding", "store", "chunking", "built_at", "store_version")
        row = {"name": Path(index_dir).name, "documents": info.get("sources"), **{k: info.get(k) for k in keep}}
        try:
            return reg.record_index(Path(os.path.abspath(index_dir)), info["version"], row)
        finally:
            reg.close()
    except Exception as e:
        _warn(f"index {index_dir}", e)
        return None
