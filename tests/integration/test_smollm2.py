"""Integration: the packaged SmolLM2 through the real CLI and real files (marked `integration`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def tailor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmtailor.cli.main", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smollm2():
    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model

    return load_model(ModelConfig())


def test_rendered_training_prompt_is_the_generation_prompt(smollm2):
    from llmtailor.chat import prompt_ids, tokenize_for_training

    _, tok = smollm2
    conv = [{"role": "system", "content": "Triage."}, {"role": "user", "content": "Login fails."},
            {"role": "assistant", "content": '{"category": "account"}'}]
    enc = tokenize_for_training(tok, conv)
    gen = prompt_ids(tok, conv[:-1])
    assert enc["input_ids"][: len(gen)] == gen
    answer = [t for t, m in zip(enc["input_ids"], enc["completion_mask"], strict=True) if m]
    assert tok.decode(answer) == '{"category": "account"}<|im_end|>'


def test_batched_generation_matches_one_at_a_time(smollm2):
    from llmtailor.generate import generate

    model, tok = smollm2
    convs = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "What is 2 + 2? Be brief."}]]
    batched = generate(model, tok, convs, max_new_tokens=12, batch_size=2)
    single = [generate(model, tok, [c], max_new_tokens=12)[0] for c in convs]
    assert batched == single and all(batched)


def _small_project(tmp_path: Path) -> Path:
    res = tailor("init", "proj", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg_path = tmp_path / "proj" / "tailor.yaml"
    # The first 90 demo rows keep every curation case (bad rows, duplicates, PII) and keep the test quick.
    data = tmp_path / "proj" / "data" / "tickets.jsonl"
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:90]))
    cfg = yaml.safe_load(cfg_path.read_text())
    # Rehearsal off: in 4 steps of 2 rows, a batch of the model's own general answers next to ticket batches would
    # make first-vs-last step loss compare unlike rows (tests/unit/train/test_rehearsal.py covers rehearsal).
    cfg["train"].update({"max_steps": 4, "batch_size": 2, "save_steps": 2, "learning_rate": 0.0005,
                         "rehearsal": 0})
    cfg["eval"].update({"max_examples": 4, "max_new_tokens": 32, "batch_size": 4,
                        "regression": {"enabled": True, "max_items": 4, "max_new_tokens": 16},
                        "redteam": {"enabled": True, "max_probes": 4, "max_new_tokens": 16}})
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


def test_whole_loop_through_the_cli(tmp_path):
    cfg_path = _small_project(tmp_path)
    res = tailor("run", "-c", str(cfg_path), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)  # stdout holds exactly one JSON object
    run_dir = Path(out["run_dir"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["final_loss"] < info["first_loss"]
    assert "rehearsal" not in info and not (run_dir / "rehearsal.jsonl").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["variants"]) == {"base", "base_fewshot", "tuned"} and results["n_examples"] == 4
    for variant in results["variants"].values():
        assert 0.0 <= variant["json_compliance"] <= 1.0 and variant["eval_loss"] > 0
    assert results["regression"]["status"] == "ok" and results["regression"]["seconds"] > 0
    assert (run_dir / "eval" / "regression.jsonl").exists() and results["redteam"].get("status") != "skipped"
    assert results["ladder"] and len(out["gates"]) == 4  # the demo's four gates, each checked
    # eval.engine auto: the ladder's answers come from llama.cpp where llama-cpp-python is installed (CI installs it).
    from llmtailor.serve.llamacpp_engine import llama_cpp_available

    assert results["generation"]["engine"] == ("llamacpp" if llama_cpp_available() else "transformers")
    gate_paths = {g["path"] for g in out["gates"]}
    assert {"json_compliance", "field_accuracy_mean", "data.leakage"} <= gate_paths
    # The speed paths are on and recorded: precision with its reason, label-only loss, the batching used.
    assert info["precision"] in ("bf16", "fp32") and info["precision_reason"]
    # Length buckets; with bf16 (padding_free auto) each batch is also one padding-free row, and run.json says so.
    assert info["label_only_loss"] is True and info["batching"].startswith("length buckets")
    assert info["padding_free"] == (info["precision"] == "bf16") and info["padding_free_reason"]
    assert ("padding-free" in info["batching"]) == info["padding_free"]
    assert 0.0 <= info["padding_share"] < 0.5 and info["eval_precision"] == info["precision"]
    # Four steps on the task already lower the held-out loss on the answers.
    assert results["variants"]["tuned"]["eval_loss"] < results["variants"]["base"]["eval_loss"]
    html = Path(out["report"]).read_text()
    assert "data:image/png;base64" in html and "tuned" in html
    assert set(out["stage_seconds"]) == {"prepare", "train", "eval", "report"}

    # Re-running prepare reuses the content-addressed version; a second run gets a new folder.
    res = tailor("data", "prepare", "-c", str(cfg_path), "--json", cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)["reused"] is True

    # The tuned adapter answers through `tailor chat`.
    res = tailor("chat", "-c", str(cfg_path), "-m", "Subject: Cannot log in\n\nMy password reset fails.",
                 "--max-new-tokens", "40", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["answer"]


def test_interrupted_training_resumes(tmp_path):
    cfg_path = _small_project(tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"].update({"max_steps": 6, "save_steps": 2})
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.Popen([sys.executable, "-m", "llmtailor.cli.main", "train", "-c", str(cfg_path)], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "proj" / "runs"
    import time

    deadline = time.time() + 600
    while time.time() < deadline:
        if list(runs.glob("*/checkpoints/checkpoint-2/trainer_state.json")) and proc.poll() is None:
            break
        time.sleep(0.5)
    proc.terminate()  # SIGTERM: treated like Ctrl-C
    proc.wait(timeout=120)
    assert proc.returncode == 130
    run_dir = next(runs.iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    res = tailor("train", "-c", str(cfg_path), "--resume", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["run_dir"] == str(run_dir) and out["steps"] == 6


def test_bad_inputs_exit_nonzero_with_location(tmp_path):
    cfg_path = _small_project(tmp_path)
    text = cfg_path.read_text().replace("  learning_rate:", "  learnig_rate:")
    cfg_path.write_text(text)
    res = tailor("train", "-c", str(cfg_path), cwd=tmp_path)
    assert res.returncode == 1 and "did you mean 'learning_rate'" in res.stderr and "Traceback" not in res.stderr
    res = tailor("eval", "-c", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert res.returncode == 1 and "config file not found" in res.stderr
