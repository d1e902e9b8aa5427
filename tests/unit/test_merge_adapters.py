"""Adapter merging on a tiny random model: weights reach the result, bad combinations are refused with clear errors,
and a merge into the base loads in plain transformers and answers as base + adapter does."""

import json
from pathlib import Path

import pytest

from llmtailor.config import TailorConfig
from llmtailor.errors import TailorError
from llmtailor.io import write_json
from llmtailor.merge.adapters import merge
from llmtailor.runs import read_run


def make_adapter(folder: Path, model_dir: Path, *, r: int = 8, seed: int = 1, targets=("q_proj", "v_proj"),
                 base: str | None = None, dora: bool = False) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved like a training run saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), use_dora=dora,
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    peft.save_pretrained(folder)
    write_json(folder / "llmtailor.json", {"base_model": base or str(model_dir), "method": "lora"})
    return folder


def make_run(runs: Path, run_id: str, model_dir: Path, **kw) -> Path:
    run = runs / run_id
    adapter = make_adapter(run / "adapter", model_dir, **kw)
    write_json(run / "run.json", {"run_id": run_id, "status": "completed", "base_model": str(model_dir),
                                  "adapter_dir": str(adapter), "dataset_dir": "/data/v1", "dataset_hash": "v1"})
    return run


def cfg_for(tmp_path: Path, model_dir: Path) -> TailorConfig:
    return TailorConfig.model_validate({"runs_dir": str(tmp_path / "runs"), "registry": {"enabled": False},
                                        "model": {"base_model": str(model_dir), "device": "cpu", "precision": "fp32"}})


def logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_linear_weights_reach_the_merged_adapter(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Weights (1, 0): the merged adapter must act exactly as the first parent; (0, 1) as the second."""
    from llmtailor.models import load_model

    cfg = cfg_for(tmp_path, tiny_model_dir)
    a = make_run(tmp_path / "runs", "run-a", tiny_model_dir, seed=1)
    b = make_run(tmp_path / "runs", "run-b", tiny_model_dir, seed=2)
    ids = tiny_tokenizer("<|im_start|>user\nhello world<|im_end|>\n", return_tensors="pt")["input_ids"]
    out_a = logits(load_model(cfg.model, adapter=a / "adapter")[0], ids)
    out_b = logits(load_model(cfg.model, adapter=b / "adapter")[0], ids)
    assert not out_a.allclose(out_b, atol=1e-4)
    for w, expect in (([1.0, 0.0], out_a), ([0.0, 1.0], out_b)):
        res = merge(cfg, ["run-a", "run-b"], method="linear", weights=w)
        merged = logits(load_model(cfg.model, adapter=res.output_dir)[0], ids)
        assert merged.allclose(expect, atol=1e-4)
    info = read_run(res.run_dir)
    assert info["status"] == "completed" and info["objective"] == "merge" and info["parents"] == ["run-a", "run-b"]
    assert info["merge"] == {"method": "linear", "weights": [0.0, 1.0], "density": None, "into_base": False}
    assert info["dataset_dir"] == "/data/v1"  # eval scores the first parent's held-out split
    assert (res.output_dir / "adapter_model.safetensors").exists() and (res.output_dir / "chat_template.jinja").exists()


def test_ties_and_cat(tmp_path, tiny_model_dir):
    cfg = cfg_for(tmp_path, tiny_model_dir)
    a = make_adapter(tmp_path / "a", tiny_model_dir, r=4, seed=1)
    b = make_adapter(tmp_path / "b", tiny_model_dir, r=8, seed=2)
    c = make_adapter(tmp_path / "c", tiny_model_dir, r=4, seed=3)
    res = merge(cfg, [str(a), str(c)], method="ties", density=0.5)
    conf = json.loads((res.output_dir / "adapter_config.json").read_text())
    assert conf["r"] == 4 and read_run(res.run_dir)["merge"]["density"] == 0.5
    res = merge(cfg, [str(a), str(b)], method="cat")
    assert json.loads((res.output_dir / "adapter_config.json").read_text())["r"] == 12


def test_bad_combinations_refused(tmp_path, tiny_model_dir):
    cfg = cfg_for(tmp_path, tiny_model_dir)
    a = make_adapter(tmp_path / "a", tiny_model_dir, r=4, seed=1)
    b = make_adapter(tmp_path / "b", tiny_model_dir, r=8, seed=2)
    with pytest.raises(TailorError, match=r"'ties' needs adapters of equal rank \(a: r=4, b: r=8\)"):
        merge(cfg, [str(a), str(b)], method="ties")
    other = make_adapter(tmp_path / "o", tiny_model_dir, seed=3, base="/models/other-base")
    with pytest.raises(TailorError, match="trained on base '/models/other-base'"):
        merge(cfg, [str(a), str(other)], method="cat")
    t = make_adapter(tmp_path / "t", tiny_model_dir, r=4, seed=4, targets=("k_proj",))
    with pytest.raises(TailorError, match="target different modules"):
        merge(cfg, [str(a), str(t)], method="ties")
    with pytest.raises(TailorError, match="one weight per adapter"):
        merge(cfg, [str(a), str(a)], method="linear", weights=[1.0])
    with pytest.raises(TailorError, match="give two or more"):
        merge(cfg, [str(a)])
    with pytest.raises(TailorError, match="neither a run"):
        merge(cfg, [str(a), "missing-run"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-written


def test_into_base_loads_in_plain_transformers_and_answers_the_same(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtailor.chat import render_prompt
    from llmtailor.models import load_model

    cfg = cfg_for(tmp_path, tiny_model_dir)
    make_run(tmp_path / "runs", "run-a", tiny_model_dir, seed=5)
    res = merge(cfg, ["run-a"], into_base=True)
    assert res.kind == "model" and read_run(res.run_dir)["adapter_dir"] == str(res.output_dir)
    assert any(res.output_dir.glob("*.safetensors")) and not (res.output_dir / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(res.output_dir)
    tok = AutoTokenizer.from_pretrained(res.output_dir)
    assert tok.chat_template
    tuned, _ = load_model(cfg.model, adapter=tmp_path / "runs" / "run-a" / "adapter")
    ids = tok(render_prompt(tok, [{"role": "user", "content": "my invoice is wrong"}]), return_tensors="pt",
              add_special_tokens=False)["input_ids"]
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.inference_mode():
        a, b = plain.generate(ids, **kw), tuned.generate(ids, **kw)
    assert a.tolist() == b.tolist()
    base, _ = load_model(cfg.model)
    assert not logits(base, ids).allclose(logits(plain, ids), atol=1e-4)  # the merge changed the weights


def test_merge_cli_json_and_registry(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from llmtailor.cli.main import app
    from llmtailor.registry.db import Registry

    make_run(tmp_path / "runs", "run-a", tiny_model_dir, seed=1)
    make_run(tmp_path / "runs", "run-b", tiny_model_dir, seed=2)
    cfg_file = tmp_path / "tailor.yaml"
    cfg_file.write_text(f"runs_dir: runs\nmodel:\n  base_model: {tiny_model_dir}\n  device: cpu\n")
    res = CliRunner().invoke(app, ["merge", "-c", str(cfg_file), "--adapters", "run-a", "run-b", "--method",
                                   "dare_ties", "--weights", "0.7,0.3", "--density", "0.6", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    run_id = Path(out["run_dir"]).name
    assert out["parents"] == ["run-a", "run-b"] and read_run(Path(out["run_dir"]))["merge"]["weights"] == [0.7, 0.3]
    cfg = TailorConfig.model_validate({"runs_dir": str(tmp_path / "runs")})
    cfg._path = cfg_file
    with Registry.for_config(cfg) as reg:
        row = reg.show(run_id)
        assert row["metrics"]["parents"] == ["run-a", "run-b"] and row["metrics"]["objective"] == "merge"
        assert reg.adapter(run_id)["path"] == out["output_dir"]
    bad = CliRunner().invoke(app, ["merge", "-c", str(cfg_file), "--adapters", "run-a", "--weights", "x"])
    assert bad.exit_code != 0
