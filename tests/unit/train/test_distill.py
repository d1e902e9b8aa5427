"""Distillation: the KD loss against a hand-computed KL, the KD trainer on tiny models, and `run_distill` with an
endpoint teacher (schema filter, resume after the teacher dies) and a local teacher (logit distillation)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from llmtailor.config import load_config
from llmtailor.data.generator import LocalGenerator
from llmtailor.errors import ConfigError, TailorError
from llmtailor.io import write_jsonl
from llmtailor.runs import read_run
from llmtailor.train.distill import comparison, run_distill
from llmtailor.train.kd import kd_loss, label_logits
from tests.unit.fake_openai import FakeOpenAI

SCHEMA = {"type": "object", "required": ["category"], "properties": {"category": {"enum": ["billing", "technical"]}}}


def test_kd_loss_matches_hand_computed_kl():
    import torch

    student = torch.tensor([[1.0, 0.5, -1.0], [0.2, 0.1, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, -0.5], [0.0, 1.5, 0.3]])
    targets = torch.tensor([0, 1])
    t, alpha = 2.0, 0.3

    def softmax(xs):
        e = [math.exp(x / t) for x in xs]
        return [v / sum(e) for v in e]

    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p, q = softmax(t_row), softmax(s_row)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    kl /= 2
    ce = 0.0
    for row, y in zip(student.tolist(), targets.tolist(), strict=True):
        ce -= row[y] - math.log(sum(math.exp(x) for x in row))
    ce /= 2
    loss, got_kl, got_ce = kd_loss(student, teacher, targets, temperature=t, alpha=alpha)
    assert got_kl.item() == pytest.approx(kl, rel=1e-5)
    assert got_ce.item() == pytest.approx(ce, rel=1e-5)
    assert loss.item() == pytest.approx(alpha * t * t * kl + (1 - alpha) * ce, rel=1e-5)
    # Same distributions: no KL; alpha 1 is pure distillation.
    same, kl0, _ = kd_loss(teacher, teacher, targets, temperature=t, alpha=1.0)
    assert kl0.item() == pytest.approx(0.0, abs=1e-6) and same.item() == pytest.approx(0.0, abs=1e-6)


def test_label_logits_are_the_models_logits_at_label_positions(tiny_tokenizer):
    import torch

    from tests.conftest import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    labels = torch.tensor([[-100, -100, 7, 8, 9], [-100, -100, -100, 6, -100]])
    logits, targets = label_logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    full = model(input_ids=ids).logits
    expected = torch.cat([full[0, 1:4], full[1, 2:3]])
    assert torch.allclose(logits, expected, atol=1e-5) and targets.tolist() == [7, 8, 9, 6]


def rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"ticket {i}: problem number {i * 13} with item {i}"},
                          {"role": "assistant", "content": json.dumps({"category": "billing"})}]} for i in range(n)]


def project(tmp_path: Path, model_dir: Path, teacher: dict, **distill) -> Path:
    write_jsonl(tmp_path / "data" / "rows.jsonl", rows(12))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    cfg = {
        "runs_dir": "runs",
        "model": {"base_model": str(model_dir), "device": "cpu"},
        "data": {"sources": ["data/rows.jsonl"], "max_seq_len": 256, "pii": {"enabled": False},
                 "split": {"eval_fraction": 0.25}},
        "train": {"max_steps": 2, "batch_size": 4, "lora_r": 4, "lora_alpha": 8, "save_steps": 10,
                  "warmup_ratio": 0.0, "group_by_length": False},
        "eval": {"json_schema": "schema.json", "max_new_tokens": 8},
        "distill": {"teacher": teacher, **distill},
    }
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def teacher_reply(messages: list[dict], n: int) -> str:
    text = messages[-1]["content"]
    if "ticket 1:" in text or "ticket 2:" in text:
        return "Sure! It is about billing."  # fails the schema
    return json.dumps({"category": "technical"})


def test_endpoint_teacher_schema_filter_student_run_with_lineage(tmp_path, tiny_model_dir):
    with FakeOpenAI(teacher_reply) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, {"base_url": srv.base_url, "retries": 0}))
        result = run_distill(cfg, show_progress=False)
    info = read_run(result.run_dir)
    parent = Path(result.dataset_dir).parent / info["distill"]["parent_dataset"]

    def bad(split: str) -> tuple[int, int]:
        texts = [json.loads(x)["messages"][0]["content"] for x in (parent / split).read_text().splitlines()]
        return sum(t.startswith(("ticket 1:", "ticket 2:")) for t in texts), len(texts)

    (bad_train, n_train), (bad_eval, n_eval) = bad("train.jsonl"), bad("eval.jsonl")
    assert (n_train, n_eval) == (9, 3) and bad_train + bad_eval == 2
    assert result.prompts == n_train and result.dropped == ({"schema": bad_train} if bad_train else {})
    assert result.kept == n_train - bad_train
    train = [json.loads(x) for x in (result.dataset_dir / "train.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["content"] == '{"category": "technical"}' for r in train)
    assert info["status"] == "completed" and info["teacher"]["kind"] == "endpoint"
    assert info["dataset_hash"] == result.dataset_hash and info["distill"]["answers_kept"] == len(train)
    assert (parent / "eval.jsonl").read_text() == (result.dataset_dir / "eval.jsonl").read_text()
    # The teacher answered the held-out rows too (same rows as the student's eval); none right.
    agg = result.teacher_eval["aggregate"]
    assert result.teacher_eval["rows"] == 3 and agg["json_compliance"] == pytest.approx(1 - bad_eval / 3)
    assert agg["field_accuracy_mean"] == 0.0
    assert comparison(result.run_dir)["teacher"]["json_compliance"] == agg["json_compliance"]
    assert info["objective"] == "distill" and info["method"] == "lora"
    # A distilled student is never picked as `run: latest` teacher or generator (it would teach itself).
    from llmtailor.data.generator import _run_adapter

    with pytest.raises(TailorError, match="no completed \\(non-distilled\\) run"):
        _run_adapter(cfg.runs_dir, "latest")


def test_teacher_dies_mid_run_then_rerun_finishes(tmp_path, tiny_model_dir):
    with FakeOpenAI(teacher_reply, die_after=4) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, {"base_url": srv.base_url, "retries": 0}))
        with pytest.raises(TailorError, match=r"3 failures in a row.*answers are safe.*rerun"):
            run_distill(cfg, show_progress=False)
    kept_before = (tmp_path / "data" / "distilled.jsonl").read_text().splitlines()
    assert 0 < len(kept_before) <= 4
    with FakeOpenAI(teacher_reply) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, {"base_url": srv.base_url, "retries": 0}))
        result = run_distill(cfg, show_progress=False, train_student=False)
    after = (tmp_path / "data" / "distilled.jsonl").read_text().splitlines()
    assert after[: len(kept_before)] == kept_before  # nothing rewritten
    assert result.asked == 9 - 4 and result.dataset_dir is not None


class ScriptedLocalTeacher(LocalGenerator):
    """The tiny random model as teacher (its logits drive the KL); its text is scripted, since a random model's
    greedy text is mostly special tokens."""

    def chat(self, messages, *, temperature, max_tokens):
        return json.dumps({"category": "billing"})


def test_logit_distillation_with_local_teacher(tmp_path, tiny_model_dir):
    from llmtailor.models import load_model

    path = project(tmp_path, tiny_model_dir, {"model": str(tiny_model_dir)},
                   logit={"enabled": True, "temperature": 2.0, "alpha": 0.5})
    cfg = load_config(path)
    model, tok = load_model(cfg.model)
    result = run_distill(cfg, show_progress=False, teacher=ScriptedLocalTeacher(model, tok, "tiny"))
    info = read_run(result.run_dir)
    assert info["status"] == "completed" and info["distill"]["logit"]["alpha"] == 0.5
    logged = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kl", 0) > 0 for r in logged)


def test_logit_distillation_refuses_a_different_tokenizer(tmp_path, tiny_model_dir):
    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_model_dir, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(other)
    path = project(tmp_path, tiny_model_dir, {"model": str(other)}, logit={"enabled": True})
    with pytest.raises(TailorError, match="do not share a tokenizer"):
        run_distill(load_config(path), show_progress=False)
    assert not (tmp_path / "data" / "distilled.jsonl").exists()  # refused before asking the teacher anything


def test_logit_distillation_needs_a_local_teacher(tmp_path, tiny_model_dir):
    path = project(tmp_path, tiny_model_dir, {"base_url": "http://127.0.0.1:9/v1"}, logit={"enabled": True})
    with pytest.raises(ConfigError, match="distill.logit needs a local teacher") as err:
        load_config(path)
    assert err.value.field == "distill"


def test_judge_threshold_filters_answers(tmp_path, tiny_model_dir):
    def reply(messages, n):
        text = messages[-1]["content"]
        if text.startswith("Rate how well"):
            return "Score: 3" if "ticket 4:" in text or "ticket 5:" in text else "9"
        return json.dumps({"category": "billing"})

    with FakeOpenAI(reply) as srv:
        path = project(tmp_path, tiny_model_dir, {"base_url": srv.base_url}, min_judge_score=5)
        raw = yaml.safe_load(path.read_text())
        raw["eval"]["judge"] = {"base_url": srv.base_url}
        path.write_text(yaml.safe_dump(raw))
        result = run_distill(load_config(path), show_progress=False, train_student=False)
    train = [json.loads(x)["messages"][0]["content"] for x in (result.dataset_dir / "train.jsonl").read_text()
             .splitlines()]
    low = result.dropped.get("judge_below_threshold", 0)
    assert low >= 1 and low == 9 - len(train) and not any(t.startswith(("ticket 4:", "ticket 5:")) for t in train)
