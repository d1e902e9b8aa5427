"""SIGKILL a preference (DPO) run and a continued-pretraining run mid-epoch after a checkpoint; `tailor train --resume`
must rebuild the same pairs / packed blocks, the same reference model and the same batch order, so every later step's
loss equals an uninterrupted run's (fp32, 1 thread), as for SFT in test_kill_train.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.io import write_jsonl
from tests.faults.conftest import cli, kill_when, run_cli, train_yaml
from tests.faults.test_kill_train import _ckpt_done, _losses, _rows

SAVE_STEPS = 3  # 20 pairs / 20 blocks at batch 2: epoch boundaries on steps 10 and 20, never on a checkpoint


def _pairs(n: int) -> list[dict]:
    """Preference rows of different lengths (so the sampler's order matters), prompt in the messages form."""
    return [{"prompt": [{"role": "user", "content": f"ticket {i}: " + " ".join(["invoice wrong"] * (1 + i % 5))}],
             "chosen": json.dumps({"id": i, "priority": ["low", "high", "mid"][i % 3]}),
             "rejected": "I am not sure" + " what you mean" * (1 + i % 4)} for i in range(n)]


def _init_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA with non-zero weights, so the DPO reference (a frozen copy of it) differs from the base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(out)
    return out


def _dpo_project(root: Path, model_dir: Path, chat: Path, prefs: Path, adapter: Path, objective: str) -> Path:
    root.mkdir(parents=True)
    (root / "tailor.yaml").write_text(
        train_yaml(model_dir, SAVE_STEPS, chat, objective=objective, init_adapter=str(adapter))
        + f"preference:\n  data: {prefs}\n  beta: 0.5\n")
    return root


def _pretrain_project(root: Path, model_dir: Path) -> Path:
    (root / "corpus").mkdir(parents=True)
    for i in range(4):  # relative sources: resolved against tailor.yaml's folder, not the run folder, on resume
        words = " ".join(f"clause {i}.{j}: the invoice is due within {j + 10} days" for j in range(2))
        (root / "corpus" / f"doc{i}.{'md' if i % 2 else 'txt'}").write_text(words + "\n")
    (root / "tailor.yaml").write_text(
        train_yaml(model_dir, SAVE_STEPS, objective="pretrain") + "pretrain:\n  sources: [corpus]\n  block_size: 16\n")
    return root


def _kill_resume_compare(ref_dir: Path, victim_dir: Path) -> dict:
    """Train `ref_dir` through; kill `victim_dir`'s run after its second checkpoint, resume it, compare losses.
    Returns the resumed run's run.json."""
    ref = cli("train", "--json", cwd=ref_dir)
    victim = cli("train", cwd=victim_dir)
    kill_when(victim, lambda: _ckpt_done(victim_dir / "runs", 2 * SAVE_STEPS))
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    ref_losses = _losses(Path(json.loads(out.strip().splitlines()[-1])["run_dir"]))
    last = max(ref_losses)
    assert sorted(ref_losses) == list(range(1, last + 1)) and last > 3 * SAVE_STEPS

    run_dir = next((victim_dir / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # killed: nothing tidied up
    assert not (run_dir / "adapter").exists()
    done = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                  if (p / "trainer_state.json").exists())
    resumed_from = done[-1]
    assert resumed_from % (last // 2) != 0  # mid-epoch

    res = run_cli("train", "--resume", "--json", cwd=victim_dir, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["run_dir"] == str(run_dir)
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, last + 1))  # nothing logged twice, nothing missing
    for step in range(resumed_from + 1, last + 1):
        assert abs(got[step] - ref_losses[step]) <= 1e-5, (step, resumed_from, got[step], ref_losses[step])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == last
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    return info


@pytest.mark.integration  # three preference-training processes each, under a minute on 2 cores
@pytest.mark.parametrize("objective", ["dpo", "orpo"])  # DPO: against a frozen copy of the start adapter
def test_kill_preference_mid_epoch_then_resume_gives_the_same_losses(tmp_path, tiny_model_dir, objective):
    chat, prefs = tmp_path / "rows.jsonl", tmp_path / "prefs.jsonl"
    write_jsonl(chat, _rows(24))
    write_jsonl(prefs, _pairs(20))
    adapter = _init_adapter(tiny_model_dir, tmp_path / "init-adapter")
    info = _kill_resume_compare(
        _dpo_project(tmp_path / "ref", tiny_model_dir, chat, prefs, adapter, objective),
        _dpo_project(tmp_path / "victim", tiny_model_dir, chat, prefs, adapter, objective))
    assert info["objective"] == objective and info["init_adapter"] == str(adapter)


@pytest.mark.integration  # three pretraining processes, under a minute on 2 cores
def test_kill_pretrain_mid_epoch_then_resume_gives_the_same_losses(tmp_path, tiny_model_dir):
    info = _kill_resume_compare(_pretrain_project(tmp_path / "ref", tiny_model_dir),
                                _pretrain_project(tmp_path / "victim", tiny_model_dir))
    assert info["objective"] == "pretrain" and info["blocks"] == 20
