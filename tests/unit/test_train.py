"""SFT on a tiny random model: loss falls, adapters save and reload, runs never overwrite, resume is exact."""

import json
from pathlib import Path

import pytest
from transformers import TrainerCallback

from llmtailor.config import TailorConfig
from llmtailor.errors import TailorError
from llmtailor.io import write_jsonl
from llmtailor.runs import read_run
from llmtailor.train.sft import train


def rows(n: int = 16) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"messages": [
            {"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": f"ticket {i % 4}: my invoice is wrong"},
            {"role": "assistant", "content": json.dumps({"category": "billing", "priority": ["low", "high"][i % 2]})},
        ]})
    return out


@pytest.fixture()
def dataset(tmp_path) -> Path:
    d = tmp_path / "ds"
    write_jsonl(d / "train.jsonl", rows())
    write_jsonl(d / "eval.jsonl", rows(4))
    return d


def make_cfg(tmp_path: Path, model_dir: Path, **train) -> TailorConfig:
    base = {"learning_rate": 5e-3, "batch_size": 4, "max_steps": 8, "save_steps": 4, "warmup_ratio": 0.0,
            "lora_r": 8, "lora_alpha": 16, "logging_steps": 1, "group_by_length": False}
    base.update(train)
    return TailorConfig.model_validate({
        "runs_dir": str(tmp_path / "runs"),
        "model": {"base_model": str(model_dir), "device": "cpu"},
        "data": {"max_seq_len": 128},
        "train": base,
    })


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_training_lowers_loss_and_saves(tmp_path, tiny_model_dir, dataset, method):
    cfg = make_cfg(tmp_path, tiny_model_dir, method=method)
    result = train(cfg, dataset, "h1", show_progress=False)
    info = read_run(result.run_dir)
    assert info["status"] == "completed" and info["dataset_hash"] == "h1" and info["method"] == method
    curve = losses(result.run_dir)
    assert curve[max(curve)] < curve[min(curve)], curve
    out = result.adapter_dir
    assert out.name == ("model" if method == "full" else "adapter")
    assert (out / "chat_template.jinja").exists() and (out / "llmtailor.json").exists()
    assert (result.run_dir / "config.yaml").exists()


def test_adapter_reloads_with_trained_weights(tmp_path, tiny_model_dir, dataset):
    import torch

    from llmtailor.models import load_model

    cfg = make_cfg(tmp_path, tiny_model_dir)
    result = train(cfg, dataset, "h1", show_progress=False)
    tuned, tok = load_model(cfg.model, adapter=result.adapter_dir)
    base, _ = load_model(cfg.model)
    ids = tok("<|im_start|>user\nhello<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert not torch.allclose(tuned(ids).logits, base(ids).logits)
        with tuned.disable_adapter():
            assert torch.allclose(tuned(ids).logits, base(ids).logits, atol=1e-5)


def test_each_run_gets_a_new_folder(tmp_path, tiny_model_dir, dataset):
    cfg = make_cfg(tmp_path, tiny_model_dir, max_steps=2)
    a = train(cfg, dataset, "h1", show_progress=False).run_dir
    b = train(cfg, dataset, "h1", show_progress=False).run_dir
    assert a != b and (a / "adapter").exists() and (b / "adapter").exists()


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 6:
            raise KeyboardInterrupt


def test_resume_continues_with_same_data_order(tmp_path, tiny_model_dir, dataset):
    cfg = make_cfg(tmp_path, tiny_model_dir, max_steps=8, save_steps=4)
    full = train(cfg, dataset, "h1", show_progress=False).run_dir

    cfg2 = make_cfg(tmp_path / "b", tiny_model_dir, max_steps=8, save_steps=4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg2, dataset, "h1", show_progress=False, callbacks=[Interrupt()])
    run_dir = next((tmp_path / "b" / "runs").iterdir())
    assert read_run(run_dir)["status"] == "interrupted"
    assert (run_dir / "checkpoints" / "checkpoint-4").exists()
    assert not (run_dir / "adapter").exists()

    resumed = train(cfg2, dataset, "h1", run_dir=run_dir, resume=True, show_progress=False)
    assert resumed.run_dir == run_dir and resumed.steps == 8
    a, b = losses(full), losses(run_dir)
    assert sorted(b) == list(range(1, 9))  # steps 5-6 logged before the interruption were trimmed, not doubled
    for step in range(1, 9):
        assert b[step] == pytest.approx(a[step], rel=1e-4), (step, a, b)


def test_resume_without_checkpoint_is_an_error(tmp_path, tiny_model_dir, dataset):
    cfg = make_cfg(tmp_path, tiny_model_dir)
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    with pytest.raises(TailorError, match="no checkpoint"):
        train(cfg, dataset, "h1", run_dir=run_dir, resume=True, show_progress=False)


def test_qlora_on_cpu_is_refused(tmp_path, tiny_model_dir, dataset):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TailorError, match="qlora"):
        train(make_cfg(tmp_path, tiny_model_dir, method="qlora"), dataset, "h1", show_progress=False)


def test_resume_passes_over_a_checkpoint_killed_mid_save(tmp_path):
    from llmtailor.train.sft import _last_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, None), (8, '{"global_')):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:
            (ckpts / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert _last_checkpoint(tmp_path).name == "checkpoint-4"
    assert _last_checkpoint(tmp_path / "elsewhere") is None
