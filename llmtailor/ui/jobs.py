"""Work started from the workbench: `tailor prepare|train|eval|run` as child processes on the project file.

A child process (not a thread) because training holds the GIL and gigabytes, and because `kill` then does exactly
what it does to a CLI run: SIGTERM makes `tailor train` mark the run `interrupted`, resumable with `--resume`.
Output goes to a log file beside the runs, so a page reload (or a second browser) can still read it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.runs import list_runs, read_run

KINDS = {"prepare": ["data", "prepare"], "train": ["train"], "eval": ["eval"], "run": ["run"]}
TRAINING = ("train", "run")
STALE_S = 120.0  # a "running" run whose files have not changed for this long is taken as dead (killed, crashed)


class JobConflict(TailorError):
    """The job would collide with one already running (a second training of the same project)."""


@dataclass
class Job:
    id: str
    kind: str
    argv: list[str]
    config: Path
    log: Path
    proc: subprocess.Popen
    started: float = field(default_factory=time.time)
    stopped_by: str | None = None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def as_dict(self) -> dict[str, Any]:
        rc = self.proc.poll()
        return {"id": self.id, "kind": self.kind, "command": " ".join(["tailor", *self.argv[3:]]),
                "running": rc is None, "returncode": rc, "started": time.strftime("%H:%M:%S",
                                                                                 time.localtime(self.started)),
                "stopped_by": self.stopped_by}

    def tail(self, limit: int = 4000) -> str:
        try:
            data = self.log.read_bytes()[-limit:]
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")


def live_cli_training(runs_dir: Path) -> str | None:
    """A run marked running whose folder changed in the last STALE_S seconds (a training started elsewhere)."""
    now = time.time()
    for run in reversed(list_runs(runs_dir)):
        if read_run(run).get("status") != "running":
            continue
        newest = max((p.stat().st_mtime for p in (run / "run.json", run / "metrics.jsonl") if p.exists()),
                     default=0.0)
        if now - newest < STALE_S:
            return run.name
    return None


class Jobs:
    """The child processes this workbench started; one training per project file at a time."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: -j.started)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def start(self, kind: str, config: Path, runs_dir: Path, extra: list[str] | None = None) -> Job:
        """Start `tailor <kind> -c config`; refuse a second training of the same project while one runs."""
        if kind not in KINDS:
            raise TailorError(f"unknown job {kind!r}: use one of {', '.join(KINDS)}")
        config = config.resolve()
        with self._lock:  # check and start as one step: two clicks at once start one training
            if kind in TRAINING:
                for job in self._jobs.values():
                    if job.kind in TRAINING and job.config == config and job.running:
                        raise JobConflict(f"a training of {config.name} is already running (job {job.id}, "
                                          f"`{job.as_dict()['command']}`); stop it first or wait for it to finish")
                other = live_cli_training(runs_dir)
                if other is not None:
                    raise JobConflict(f"run {other} of this project is training right now (started outside this "
                                      "workbench); wait for it, or stop it where it was started")
            job_id = time.strftime("%H%M%S") + "-" + secrets.token_hex(2)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{job_id}-{kind}.log"
            argv = [sys.executable, "-m", "llmtailor.cli.main", *KINDS[kind], "-c", str(config), *(extra or [])]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
            with log.open("wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(config.parent), env=env, start_new_session=True)
            job = Job(job_id, kind, argv, config, log, proc)
            self._jobs[job_id] = job
            return job

    def stop(self, job_id: str, actor: str) -> Job:
        """SIGTERM the job's process group: a training saves its state and becomes `interrupted`."""
        job = self._jobs.get(job_id)
        if job is None:
            raise TailorError(f"no job {job_id!r} in this workbench")
        if not job.running:
            raise TailorError(f"job {job_id} already finished (exit code {job.proc.returncode})")
        job.stopped_by = actor
        os.killpg(job.proc.pid, signal.SIGTERM)
        return job

    def close(self, wait_s: float = 10.0) -> None:
        """On shutdown, stop what is still running (trainings become resumable)."""
        for job in self._jobs.values():
            if job.running:
                os.killpg(job.proc.pid, signal.SIGTERM)
        deadline = time.time() + wait_s
        for job in self._jobs.values():
            try:
                job.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(job.proc.pid, signal.SIGKILL)
