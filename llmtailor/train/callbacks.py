"""Trainer callbacks: a rich progress bar with loss and ETA, and a metrics.jsonl log per step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmtailor.io import append_jsonl


class MetricsLogger(TrainerCallback):
    """Append every Trainer log (loss, learning rate, grad norm) to metrics.jsonl as it happens.

    Each row carries its wall-clock `time`, so a reader can tell tokens/s while the run is still going (the Trainer
    only reports its speed at the end)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and state.is_world_process_zero:
            append_jsonl(self.path, {"step": state.global_step, "epoch": state.epoch, **logs,
                                     "time": round(time.time(), 3)})


class RichProgress(TrainerCallback):
    """Steps, loss and ETA on stderr (replaces the Trainer's tqdm bar)."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="-")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
