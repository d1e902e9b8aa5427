"""The loop as plain functions: each stage loads what it needs from the config and the run folder.

The CLI and Python users call the same functions; `run_all` chains them and times each stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.config import TailorConfig, load_config
from llmtailor.errors import TailorError
from llmtailor.runs import latest_run, resolve_run, update_run


def _config(config: TailorConfig | str | Path) -> TailorConfig:
    return config if isinstance(config, TailorConfig) else load_config(config)


def prepare_stage(config: TailorConfig | str | Path, *, show_progress: bool = True) -> Any:
    """Validate, curate and version the data (reused when input and config are unchanged)."""
    from llmtailor.data.prepare import prepare
    from llmtailor.models import load_tokenizer
    from llmtailor.registry.hooks import record_dataset

    cfg = _config(config)
    version = prepare(cfg.data, load_tokenizer(cfg.model), show_progress=show_progress)
    record_dataset(cfg, version)  # never raises: a registry outage only warns
    return version


def _resume_target(cfg: TailorConfig, run: str | None) -> Path:
    if run is not None:
        return resolve_run(cfg.runs_dir, run)
    found = latest_run(cfg.runs_dir, exclude_status="completed")
    if found is None:
        raise TailorError(f"{cfg.runs_dir}: no unfinished run to resume")
    return found


def train_stage(
    config: TailorConfig | str | Path,
    *,
    resume: bool = False,
    run: str | None = None,
    max_steps: int | None = None,
    show_progress: bool = True,
) -> Any:
    """Train on the current dataset version, or continue an interrupted run with its own saved config."""
    from llmtailor.registry.hooks import record_training

    cfg = _config(config)
    if resume:
        from llmtailor.train.resume import resume_run

        result = resume_run(cfg, _resume_target(cfg, run), show_progress=show_progress)
        record_training(cfg, result.run_dir)
        return result
    if max_steps is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": max_steps})})
        cfg._path = _config(config).path
    from llmtailor.train.objectives import needs_chat_data, trainer_for

    # DPO/ORPO/pretrain runs keep the chat dataset version too: its held-out split is what `tailor eval` scores.
    version = prepare_stage(cfg, show_progress=show_progress) if needs_chat_data(cfg) else None
    result = trainer_for(cfg)(cfg, version.path if version else None, version.hash if version else None,
                              show_progress=show_progress)
    record_training(cfg, result.run_dir)
    return result


def eval_stage(config: TailorConfig | str | Path, *, run: str | None = None, show_progress: bool = True,
               say: Any = None) -> Any:
    """The adaptation ladder (and regression, red-team, judge, gates) on the run's held-out split."""
    from llmtailor.eval.evaluate import evaluate
    from llmtailor.registry.hooks import record_evaluation

    cfg = _config(config)
    if say is None and show_progress:
        from llmtailor.cli.output import console

        say = console.print
    result = evaluate(cfg, resolve_run(cfg.runs_dir, run), show_progress=show_progress, say=say)
    record_evaluation(cfg, result.run_dir)
    return result


def report_stage(config: TailorConfig | str | Path, *, run: str | None = None, out: Path | None = None) -> Path:
    """Self-contained HTML report of a run."""
    from llmtailor.eval.report import write_report

    cfg = _config(config)
    run_dir = resolve_run(cfg.runs_dir, run)
    path = write_report(run_dir, out, title=cfg.report.title or cfg.project, sample_size=cfg.report.sample_size)
    update_run(run_dir, report=str(path))
    return path


def _release() -> None:
    """Drop what a finished stage no longer needs (spaCy/Presidio engines, the trainer's model and optimizer) so
    the next stage's peak does not stack on top of it; then hand freed heap pages back to the OS."""
    import ctypes
    import gc

    from llmtailor.data.redact import engines

    engines.cache_clear()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass
class LoopResult:
    """Everything `tailor run` produced."""

    run_dir: Path
    dataset_hash: str
    report: Path
    metrics: dict[str, dict[str, Any]]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "dataset_hash": self.dataset_hash, "report": str(self.report),
                "metrics": self.metrics, "stage_seconds": self.stage_seconds, "gates": self.gates}


def run_all(config: TailorConfig | str | Path, *, show_progress: bool = True, say: Any = None) -> LoopResult:
    """prepare -> train -> eval -> report, timing each stage (recorded in run.json)."""
    from llmtailor.eval.evaluate import evaluate
    from llmtailor.registry.hooks import record_evaluation, record_training

    cfg = _config(config)
    say = say or (lambda msg: None)
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    say("[bold]1/4 data[/]: validate, de-duplicate, redact PII, split, version")
    version = prepare_stage(cfg, show_progress=show_progress)
    _release()
    times["prepare"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    say(f"[bold]2/4 train[/]: {cfg.train.method} on dataset {version.hash}")
    from llmtailor.train.objectives import trainer_for

    trained = trainer_for(cfg)(cfg, version.path, version.hash, show_progress=show_progress)
    record_training(cfg, trained.run_dir)
    _release()
    times["train"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    say("[bold]3/4 eval[/]: the adaptation ladder on the held-out split")
    evaluated = evaluate(cfg, trained.run_dir, show_progress=show_progress, say=say)
    record_evaluation(cfg, trained.run_dir)
    for gate in evaluated.gates:
        say(f"gate {'pass' if gate['passed'] else '[bold red]FAIL[/]'}: {gate['text']} ({gate['reason']})")
    times["eval"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    say("[bold]4/4 report[/]")
    update_run(trained.run_dir, stage_seconds=times)
    report = report_stage(cfg, run=str(trained.run_dir))
    times["report"] = round(time.perf_counter() - t0, 1)
    update_run(trained.run_dir, stage_seconds=times)
    return LoopResult(trained.run_dir, version.hash, report, evaluated.variants, times, evaluated.gates)
