"""Preference tuning on a tiny random model: rows validated with file:line:field, DPO raises the reward margin,
starts from an SFT adapter (lineage recorded), and ORPO runs reference-free."""

import json
import re
from pathlib import Path

import pytest

from llmtailor.config import TailorConfig
from llmtailor.data.preferences import load_preferences, render_pair, validate_preferences
from llmtailor.errors import RowError, TailorError
from llmtailor.io import write_jsonl
from llmtailor.runs import read_run


def pairs(n: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"prompt": f"ticket {i % 4}: my invoice is wrong",
                    "chosen": json.dumps({"category": "billing", "priority": "high"}),
                    "rejected": "I am not sure what you mean."})
    return out


def make_cfg(tmp_path: Path, model_dir: Path, pref: Path, **train) -> TailorConfig:
    base = {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 6, "save_steps": 100, "warmup_ratio": 0.0,
            "lora_r": 8, "lora_alpha": 16, "logging_steps": 1, "objective": "dpo"}
    base.update(train)
    return TailorConfig.model_validate({
        "runs_dir": str(tmp_path / "runs"),
        "model": {"base_model": str(model_dir), "device": "cpu", "precision": "fp32"},
        "data": {"max_seq_len": 128, "system_prompt": "Answer with JSON."},
        "train": base,
        "preference": {"data": str(pref), "beta": 0.5},
    })


@pytest.mark.parametrize("row, field, words", [
    ({"prompt": "p", "chosen": "same", "rejected": " same "}, "rejected", "same text as chosen"),
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "chosen", "empty"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], "chosen": "a",
      "rejected": "b"}, "prompt", "last turn"),
    ({"prompt": [{"role": "bot", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt[0].role", "must be"),
])
def test_bad_rows_name_file_line_field(tmp_path, row, field, words):
    f = tmp_path / "prefs.jsonl"
    write_jsonl(f, [pairs(1)[0], row])
    report = validate_preferences(f)
    assert len(report.rows) == 1 and len(report.problems) == 1
    err = report.problems[0]
    assert (err.file, err.line, err.field) == (str(f), 2, field) and words in err.problem
    with pytest.raises(RowError, match=re.escape(f"prefs.jsonl:2: {field}: ")):
        load_preferences(f)


def test_messages_form_and_rendering_match_sft_template(tmp_path, tiny_tokenizer):
    from llmtailor.chat import render_conversation, render_prompt

    f = tmp_path / "p.jsonl"
    write_jsonl(f, [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "A"}],
                     "rejected": {"role": "assistant", "content": "B"}}])
    (row,) = load_preferences(f, system_prompt="sys")
    assert row.prompt[0] == {"role": "system", "content": "sys"} and (row.chosen, row.rejected) == ("A", "B")
    text = render_pair(tiny_tokenizer, row)
    msgs = [*row.prompt, {"role": "assistant", "content": "A"}]
    assert text["prompt"] == render_prompt(tiny_tokenizer, row.prompt)
    assert text["prompt"] + text["chosen"] == render_conversation(tiny_tokenizer, msgs).rstrip("\n")
    assert text["chosen"].endswith("<|im_end|>")


def test_dpo_cli_refuses_bad_rows(tmp_path, tiny_model_dir):
    """A bad pair stops training before any model is loaded, with a non-zero exit and no run folder."""
    from typer.testing import CliRunner

    from llmtailor.cli.main import app

    f = tmp_path / "prefs.jsonl"
    write_jsonl(f, [*pairs(2), {"prompt": "x", "chosen": "a", "rejected": "a"}])
    cfg = make_cfg(tmp_path, tiny_model_dir, f)
    cfg_file = tmp_path / "tailor.yaml"
    cfg_file.write_text(cfg.to_yaml())
    res = CliRunner().invoke(app, ["data", "check-preferences", str(f)])
    assert res.exit_code == 1 and "prefs.jsonl:3: rejected: same text as chosen" in res.output


def test_dpo_from_sft_adapter_raises_margin_and_records_lineage(tmp_path, tiny_model_dir):
    from llmtailor.train.dpo import train as train_dpo
    from llmtailor.train.sft import train as train_sft
    from tests.unit.test_train import rows as sft_rows

    ds = tmp_path / "ds"
    write_jsonl(ds / "train.jsonl", sft_rows(8))
    write_jsonl(ds / "eval.jsonl", sft_rows(2))
    f = tmp_path / "prefs.jsonl"
    write_jsonl(f, pairs())
    sft_cfg = make_cfg(tmp_path, tiny_model_dir, f, objective="sft", max_steps=2, group_by_length=False)
    sft = train_sft(sft_cfg, ds, "h1", show_progress=False)

    cfg = make_cfg(tmp_path, tiny_model_dir, f, init_adapter=sft.run_dir.name)
    result = train_dpo(cfg, ds, "h1", show_progress=False)
    info = read_run(result.run_dir)
    assert info["status"] == "completed" and info["objective"] == "dpo"
    assert info["parents"] == [sft.run_dir.name] and info["init_adapter"] == str(sft.adapter_dir)
    assert info["preference_rows"] == 8 and info["dataset_dir"] == str(ds)
    assert info["train_tokens_per_s"] > 0
    pm = info["preference_metrics"]
    assert pm["last"]["rewards/margins"] > pm["first"]["rewards/margins"] + 0.01, pm
    saved = result.adapter_dir
    assert (saved / "adapter_model.safetensors").exists() and not (saved / "ref").exists()
    assert (saved / "chat_template.jinja").exists()

    # The DPO adapter is the SFT adapter trained further: same shapes, different weights.
    from safetensors.torch import load_file

    a, b = load_file(sft.adapter_dir / "adapter_model.safetensors"), load_file(saved / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not a[k].equal(b[k]) for k in a)


def test_orpo_from_base_runs_reference_free(tmp_path, tiny_model_dir):
    from llmtailor.train.dpo import train as train_dpo

    f = tmp_path / "prefs.jsonl"
    write_jsonl(f, pairs())
    cfg = make_cfg(tmp_path, tiny_model_dir, f, objective="orpo", max_steps=3)
    result = train_dpo(cfg, None, None, show_progress=False)
    info = read_run(result.run_dir)
    assert info["status"] == "completed" and info["loss_type"] == "orpo" and info["parents"] == []
    assert "rewards/margins" in info["preference_metrics"]["last"] and info["train_tokens_per_s"] > 0


def test_init_adapter_of_other_base_refused(tmp_path, tiny_model_dir):
    from llmtailor.train.objectives import resolve_adapter

    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text("{}")
    (ad / "llmtailor.json").write_text(json.dumps({"base_model": "/elsewhere/model"}))
    cfg = make_cfg(tmp_path, tiny_model_dir, tmp_path / "x.jsonl")
    with pytest.raises(TailorError, match="trained on base '/elsewhere/model'"):
        resolve_adapter(cfg, str(ad))
    with pytest.raises(TailorError, match="neither a run"):
        resolve_adapter(cfg, "no-such-run")


def test_unknown_loss_type_is_a_config_error(tmp_path):
    from llmtailor.config import parse_config
    from llmtailor.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tailor.yaml:3: preference.loss_type"):
        parse_config("train: {objective: dpo}\npreference:\n  loss_type: simpo\n", tmp_path / "tailor.yaml")
