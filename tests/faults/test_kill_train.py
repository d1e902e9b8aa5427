"""SIGKILL `tailor train` mid-epoch (default batching: length buckets) after a checkpoint; `tailor train --resume`
must replay the same batches, so every later step's loss equals an uninterrupted run's (fp32, 1 thread)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.io import write_jsonl
from tests.faults.conftest import cli, kill_when, run_cli, train_yaml

SAVE_STEPS = 3  # epoch boundaries fall on steps 10 and 20 (20 train rows, batch 2): never on a checkpoint


def _rows(n: int) -> list[dict]:
    """Rows of clearly different lengths, so length buckets reorder them."""
    return [{"messages": [
        {"role": "user", "content": f"ticket {i}: " + " ".join(["invoice wrong"] * (1 + i % 7))},
        {"role": "assistant", "content": json.dumps({"id": i, "priority": ["low", "high", "mid"][i % 3]})},
    ]} for i in range(n)]


def _project(root: Path, model_dir: Path, data: Path) -> Path:
    root.mkdir(parents=True)
    (root / "tailor.yaml").write_text(train_yaml(model_dir, SAVE_STEPS, data))
    return root


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _ckpt_done(runs: Path, step: int) -> bool:
    for state in runs.glob(f"*/checkpoints/checkpoint-{step}/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except ValueError:
            return False
    return False


@pytest.mark.integration  # three training processes: the heaviest fault test (about a minute on 2 busy cores)
def test_kill_mid_epoch_then_resume_gives_the_same_losses(tmp_path, tiny_model_dir):
    data = tmp_path / "rows.jsonl"
    write_jsonl(data, _rows(24))
    ref_dir = _project(tmp_path / "ref", tiny_model_dir, data)
    victim_dir = _project(tmp_path / "victim", tiny_model_dir, data)
    ref = cli("train", "--json", cwd=ref_dir)
    victim = cli("train", cwd=victim_dir)
    kill_when(victim, lambda: _ckpt_done(victim_dir / "runs", 2 * SAVE_STEPS))
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    ref_losses = _losses(Path(json.loads(out.strip().splitlines()[-1])["run_dir"]))
    assert sorted(ref_losses) == list(range(1, 21))

    run_dir = next((victim_dir / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # killed: nothing tidied up
    assert not (run_dir / "adapter").exists()
    done = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                  if (p / "trainer_state.json").exists())
    resumed_from = done[-1]
    assert resumed_from % 10 != 0  # mid-epoch

    res = run_cli("train", "--resume", "--json", cwd=victim_dir, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["run_dir"] == str(run_dir)
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, 21))  # nothing logged twice, nothing missing
    for step in range(resumed_from + 1, 21):
        assert abs(got[step] - ref_losses[step]) <= 1e-5, (step, resumed_from, got[step], ref_losses[step])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
