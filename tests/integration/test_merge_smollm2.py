"""Integration: `tailor merge --into-base` on the packaged SmolLM2 (tied embeddings, real chat template) writes a
folder that plain transformers loads and that answers exactly as base + adapter (marked `integration`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_merge_into_base_answers_as_base_plus_adapter(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtailor.chat import render_prompt
    from llmtailor.config import ModelConfig
    from llmtailor.models import resolve_model_dir

    base_dir = resolve_model_dir(ModelConfig())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM",
                                            init_lora_weights=False))
    with torch.no_grad():  # a small random delta: the answers change, but stay language
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.02)
    adapter = tmp_path / "runs" / "r1" / "adapter"
    peft.save_pretrained(adapter)
    (adapter / "llmtailor.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct"}))
    (tmp_path / "tailor.yaml").write_text("runs_dir: runs\nmodel: {device: cpu, precision: fp32}\n"
                                          "registry: {enabled: false}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "llmtailor.cli.main", "merge", "-c", "tailor.yaml", "--adapters",
                          str(adapter), "--into-base", "--json"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = Path(json.loads(res.stdout)["output_dir"])

    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tok(render_prompt(tok, [{"role": "user", "content": "My invoice is wrong, who should I contact?"}]),
              return_tensors="pt", add_special_tokens=False)["input_ids"]
    kw = {"max_new_tokens": 16, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.inference_mode():
        assert merged.generate(ids, **kw).tolist() == peft.generate(input_ids=ids, **kw).tolist()
