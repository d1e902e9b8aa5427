"""Fault campaign helpers: run the real `tailor` CLI in a child process, SIGKILL it once it shows progress.

SIGKILL cannot be caught, so nothing in the child (no `finally`, no atexit) gets to tidy up: what is left on disk
is exactly what a crash, an OOM kill or a pulled plug (minus unflushed OS buffers) would leave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m llmtailor.cli.main ARGS` (the same entry point as the `tailor` script)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "llmtailor.cli.main", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = cli(*args, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 90, poll: float = 0.01) -> float:
    """SIGKILL `proc` as soon as `ready()` is true; fail if it exits or times out first. Returns seconds waited."""
    start = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited ({proc.returncode}) before the kill point:\n{out}\n{err[-3000:]}")
        if time.monotonic() - start > timeout:
            proc.kill()
            proc.communicate()
            raise AssertionError("the kill point was never reached")
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return time.monotonic() - start


def train_yaml(model_dir: Path, save_steps: int, data: Path | None = None, **train: str) -> str:
    """tailor.yaml for the training fault tests: the tiny model in fp32, registry off, optionally a chat dataset,
    and a train section (2 epochs of batch 2, checkpoints every `save_steps`, one thread) with `train` added."""
    text = (f"project: fault\nruns_dir: runs\nregistry:\n  enabled: false\n"
            f"model:\n  base_model: {model_dir}\n  device: cpu\n  precision: fp32\n")
    if data is not None:
        text += (f"data:\n  sources: [{data}]\n  max_seq_len: 128\n  output_dir: {data.parent / 'datasets'}\n"
                 f"  pii:\n    enabled: false\n  dedup:\n    enabled: false\n  split:\n    eval_fraction: 0.15\n")
    fields = {"epochs": "2", "batch_size": "2", "save_steps": str(save_steps), "learning_rate": "0.005",
              "warmup_ratio": "0.0", "threads": "1", **train}
    return text + "train:\n" + "".join(f"  {k}: {v}\n" for k, v in fields.items())
