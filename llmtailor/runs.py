"""Run folders: every training run gets a new folder, never reused, with a run.json describing it."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.io import write_json


def new_run_dir(runs_dir: Path) -> Path:
    """Create a fresh, unique run folder (timestamp + random suffix); an existing folder is never reused."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        path = runs_dir / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise TailorError(f"{runs_dir}: could not create a new run folder")


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run's run.json (empty dict if absent)."""
    path = run_dir / "run.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def update_run(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into run.json atomically."""
    info = read_run(run_dir)
    info.update(fields)
    write_json(run_dir / "run.json", info)
    return info


def list_runs(runs_dir: Path) -> list[Path]:
    """Run folders, oldest first."""
    if not runs_dir.exists():
        return []
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / "run.json").exists())


def latest_run(runs_dir: Path, *, status: str | None = None, exclude_status: str | None = None) -> Path | None:
    """Most recent run folder, optionally filtered by its status."""
    for run in reversed(list_runs(runs_dir)):
        st = read_run(run).get("status")
        if status is not None and st != status:
            continue
        if exclude_status is not None and st == exclude_status:
            continue
        return run
    return None


def resolve_run(runs_dir: Path, run: str | Path | None) -> Path:
    """A run folder named on the command line (id or path), or the latest trained one."""
    if run is not None:
        path = Path(run)
        if not path.is_absolute() and not path.exists():
            path = runs_dir / str(run)
        if not (path / "run.json").exists():
            raise TailorError(f"{path}: not a run folder (no run.json)")
        return path
    found = latest_run(runs_dir, status="completed")
    if found is None:
        raise TailorError(f"{runs_dir}: no completed training run yet; run `tailor train -c tailor.yaml` first")
    return found
