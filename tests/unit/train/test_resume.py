"""`--resume` for every objective: the shared helpers, and the clear refusals (finished run, no checkpoint, another
objective, changed preference pairs or pretraining text) that must name the run folder and say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.config import TailorConfig
from llmtailor.errors import TailorError
from llmtailor.io import write_jsonl
from llmtailor.runs import read_run, update_run
from llmtailor.train.objectives import start_run
from llmtailor.train.resume import check_resumable, last_checkpoint, resume_run, trim_metrics


def make_cfg(tmp_path: Path, model_dir: Path, objective: str, **extra: object) -> TailorConfig:
    prefs = tmp_path / "prefs.jsonl"
    if not prefs.exists():
        write_jsonl(prefs, [{"prompt": f"ticket {i}", "chosen": "billing", "rejected": "no idea"} for i in range(4)])
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("The invoice is due within thirty days of delivery. " * 8)
    return TailorConfig.model_validate({
        "runs_dir": str(tmp_path / "runs"),
        "model": {"base_model": str(model_dir), "device": "cpu", "precision": "fp32"},
        "data": {"max_seq_len": 64},
        "train": {"objective": objective, "max_steps": 4, "save_steps": 2, "batch_size": 2, **extra},
        "preference": {"data": str(prefs)},
        "pretrain": {"sources": [str(corpus)], "block_size": 16},
    })


def fake_run(cfg: TailorConfig, *, status: str = "interrupted", checkpoint: int | None = 2, **fields: object) -> Path:
    """A run folder as an interrupted process leaves it (no training needed to test the refusals)."""
    run_dir = start_run(cfg, "cpu", "float32", dataset_hash=None, dataset_dir=None, **fields)
    update_run(run_dir, status=status)
    if checkpoint is not None:
        ck = run_dir / "checkpoints" / f"checkpoint-{checkpoint}"
        ck.mkdir(parents=True)
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": checkpoint, "epoch": 0.5}))
    return run_dir


def test_trim_metrics_drops_later_steps_and_cut_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    trim_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    trim_metrics(tmp_path / "missing.jsonl", 3)  # nothing logged yet: nothing to trim


def test_last_checkpoint_is_shared_with_sft(tmp_path):
    from llmtailor.train import sft

    assert sft._last_checkpoint is last_checkpoint
    assert last_checkpoint(tmp_path) is None


@pytest.mark.parametrize("objective", ["sft", "dpo", "orpo", "pretrain"])
def test_finished_run_is_refused(tmp_path, tiny_model_dir, objective):
    cfg = make_cfg(tmp_path, tiny_model_dir, objective)
    run_dir = fake_run(cfg, status="completed")
    with pytest.raises(TailorError, match="already completed") as err:
        resume_run(cfg, run_dir, show_progress=False)
    assert str(run_dir) in str(err.value) and "tailor train" in str(err.value)
    assert read_run(run_dir)["status"] == "completed"


@pytest.mark.parametrize("objective", ["dpo", "orpo", "pretrain"])
def test_run_without_checkpoint_is_refused(tmp_path, tiny_model_dir, objective):
    cfg = make_cfg(tmp_path, tiny_model_dir, objective)
    run_dir = fake_run(cfg, checkpoint=None, preference_data=str(tmp_path / "prefs.jsonl"))
    with pytest.raises(TailorError, match="no checkpoint to resume from") as err:
        resume_run(cfg, run_dir, show_progress=False)
    assert str(run_dir) in str(err.value) and "without --resume" in str(err.value)


def test_run_of_another_objective_is_refused(tmp_path, tiny_model_dir):
    dpo_cfg = make_cfg(tmp_path, tiny_model_dir, "dpo")
    run_dir = fake_run(dpo_cfg)
    with pytest.raises(TailorError, match="train.objective: sft") as err:
        resume_run(make_cfg(tmp_path, tiny_model_dir, "sft"), run_dir, show_progress=False)
    assert str(run_dir) in str(err.value) and "set it back to dpo" in str(err.value)
    # Called directly, a trainer also refuses a run of another objective (orpo would read DPO's checkpoint).
    from llmtailor.train.dpo import train as train_pref

    with pytest.raises(TailorError, match="a dpo run cannot be resumed as train.objective orpo"):
        train_pref(make_cfg(tmp_path, tiny_model_dir, "orpo"), None, None, run_dir=run_dir, resume=True,
                   show_progress=False)
    with pytest.raises(TailorError, match="a dpo run"):
        check_resumable(run_dir, "pretrain")


def test_dpo_resume_refuses_changed_pairs_and_missing_adapter(tmp_path, tiny_model_dir):
    from llmtailor.io import file_hash
    from llmtailor.train.dpo import train as train_pref

    cfg = make_cfg(tmp_path, tiny_model_dir, "dpo")
    prefs = tmp_path / "prefs.jsonl"
    run_dir = fake_run(cfg, preference_data=str(prefs), preference_hash=file_hash(prefs))
    with prefs.open("a") as f:
        f.write(json.dumps({"prompt": "new", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(TailorError, match="changed since this run started") as err:
        train_pref(cfg, None, None, run_dir=run_dir, resume=True, show_progress=False)
    assert str(run_dir) in str(err.value) and str(prefs) in str(err.value)

    gone = fake_run(cfg, preference_data=str(prefs), preference_hash=file_hash(prefs),
                    init_adapter=str(tmp_path / "deleted-adapter"))
    with pytest.raises(TailorError, match="starting adapter .* is gone"):
        train_pref(cfg, None, None, run_dir=gone, resume=True, show_progress=False)


def test_pretrain_resume_refuses_changed_text(tmp_path, tiny_model_dir):
    from llmtailor.train.pretrain import train as train_pt

    cfg = make_cfg(tmp_path, tiny_model_dir, "pretrain")
    corpus = tmp_path / "corpus.txt"
    run_dir = fake_run(cfg, corpus_files=[str(corpus)], corpus_hash="0" * 16, blocks=3, corpus_tokens=40)
    with pytest.raises(TailorError, match="pretraining text changed since this run started") as err:
        train_pt(cfg, None, None, run_dir=run_dir, resume=True, show_progress=False)
    assert str(run_dir) in str(err.value) and "without --resume" in str(err.value)
