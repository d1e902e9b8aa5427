"""Continuing an interrupted run, the same way for every objective (SFT, DPO/ORPO, continued pretraining).

The run folder is reused: training continues from its last complete checkpoint through the Trainer's
`resume_from_checkpoint` (weights, optimizer, scheduler, RNG and sampler position), metrics.jsonl loses the lines
written after that checkpoint (those steps are trained again), and run.json goes back to `running` until the run
completes. Each objective checks that what it rebuilds (rows, preference pairs, packed text blocks, the starting
adapter) is what the interrupted run trained on, so the resumed steps replay the same batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import TailorError
from llmtailor.runs import read_run, update_run

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig
    from llmtailor.train.sft import TrainResult


def complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: a run killed while saving leaves a folder without a valid one."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a `checkpoint-N` folder was saved at."""
    return int(checkpoint.name.split("-")[-1])


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint; half-written ones (killed mid-save) are passed over."""
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=checkpoint_step)
    return next((c for c in reversed(ckpts) if complete(c)), None)


def trim_metrics(path: Path, upto_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from; those steps are trained again."""
    from llmtailor.io import write_jsonl

    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the interruption
        if row.get("step", 0) <= upto_step:
            kept.append(row)
    write_jsonl(path, kept)


def resume_checkpoint(run_dir: Path | None, save_steps: int) -> Path:
    """The checkpoint to continue from; a run killed before its first checkpoint has nothing to continue."""
    if run_dir is None:
        raise TailorError("resume needs the run folder to continue")
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is None:
        raise TailorError(
            f"{run_dir}: no checkpoint to resume from (checkpoints are written every {save_steps} steps); "
            "start the run again without --resume"
        )
    return checkpoint


def check_resumable(run_dir: Path, objective: str) -> dict[str, Any]:
    """run.json of a run that `objective` may continue: not finished, and trained with that objective (another
    objective's trainer would rebuild other data and read the checkpoint as something it is not)."""
    info = read_run(run_dir)
    if info.get("status") == "completed":
        raise TailorError(f"{run_dir}: this run already completed; nothing to resume (start a new run with "
                          "`tailor train`, or name an interrupted run with --run)")
    run_objective = info.get("objective") or "sft"
    if run_objective != objective:
        raise TailorError(f"{run_dir}: a {run_objective} run cannot be resumed as train.objective {objective}; set "
                          f"train.objective: {run_objective} to resume it, or start a new run without --resume")
    return info


def open_resume(run_dir: Path | None, objective: str, save_steps: int) -> tuple[Path, dict[str, Any], Path]:
    """(run folder, its run.json, checkpoint) of a run `objective` may continue, or a TailorError saying why not."""
    if run_dir is None:
        raise TailorError("resume needs the run folder to continue")
    info = check_resumable(run_dir, objective)
    return run_dir, info, resume_checkpoint(run_dir, save_steps)


def begin(run_dir: Path, checkpoint: Path) -> float:
    """Trim metrics.jsonl back to the checkpoint, mark the run running again; the epoch the checkpoint reached
    (tokens/s counts only what this process trains)."""
    trim_metrics(run_dir / "metrics.jsonl", checkpoint_step(checkpoint))
    update_run(run_dir, status="running")
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0.0
    return float(state.get("epoch") or 0.0)


def total_runtime(run_dir: Path, runtime: float) -> float:
    """Seconds of training over every process of the run (the interrupted part recorded none, so this is a floor)."""
    return round(runtime + float(read_run(run_dir).get("train_runtime_s") or 0.0), 2)


def resume_run(cfg: TailorConfig, run_dir: Path, *, show_progress: bool = True) -> TrainResult:
    """Continue `run_dir` with its own saved config and the trainer of its objective (what `tailor train --resume`
    does); `cfg` (the project's tailor.yaml) must ask for the same objective."""
    from llmtailor.config import parse_config
    from llmtailor.train.objectives import trainer_for

    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise TailorError(f"{run_dir}: no config.yaml in the run folder; it cannot be resumed, start a new run")
    run_cfg = parse_config(saved.read_text(encoding="utf-8"), saved)
    info = check_resumable(run_dir, run_cfg.train.objective)
    if cfg.train.objective != run_cfg.train.objective:
        raise TailorError(f"{run_dir}: a {run_cfg.train.objective} run, but {cfg.path or 'the config'} sets "
                          f"train.objective: {cfg.train.objective}; set it back to {run_cfg.train.objective} to "
                          "resume this run, or start a new run without --resume")
    dataset_dir = info.get("dataset_dir")
    return trainer_for(run_cfg)(run_cfg, Path(dataset_dir) if dataset_dir else None, info.get("dataset_hash"),
                                run_dir=run_dir, resume=True, show_progress=show_progress)
