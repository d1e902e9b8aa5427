"""Integration: the packaged SmolLM2 with a LoRA adapter briefly trained on the demo tickets, exported to GGUF;
llama.cpp's greedy tokens on the exported files must agree with transformers' (PEFT on the fp32 cache folder) on at
least 95% of the positions of the demo's held-out prompts (marked `integration`; needs llama-cpp-python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp's OpenMP runtime loads
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (CI installs it)")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
N_PROMPTS = 8
MAX_NEW = 40


def tailor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmtailor.cli.main", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)


def _train_quick_adapter(folder: Path, rows: list[dict], out: Path, steps: int = 12) -> Path:
    """A real (trained, non-zero) LoRA: a dozen AdamW steps on demo answers, enough to change the greedy tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtailor.chat import tokenize_for_training

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-3)
    for step in range(steps):
        enc = tokenize_for_training(tok, rows[step % len(rows)]["messages"])
        ids = torch.tensor([enc["input_ids"]])
        labels = ids.masked_fill(torch.tensor([enc["completion_mask"]]) == 0, -100)
        peft(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(project dir, cache folder, adapter dir, held-out prompt ids, transformers' greedy answers, eos id, run dir)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmtailor.chat import prompt_ids
    from llmtailor.config import ModelConfig
    from llmtailor.export.verify import hf_greedy
    from llmtailor.models import load_tokenizer, resolve_model_dir
    from llmtailor.runs import update_run

    tmp = tmp_path_factory.mktemp("gguf")
    assert tailor("init", "proj", cwd=tmp).returncode == 0
    res = tailor("data", "prepare", "-c", "proj/tailor.yaml", "--json", cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    dataset = Path(json.loads(res.stdout)["path"])
    held_out = [json.loads(line) for line in (dataset / "eval.jsonl").read_text().splitlines()][:N_PROMPTS]
    train = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    folder = resolve_model_dir(ModelConfig())
    run = tmp / "proj" / "runs" / "20260101-000000-gguf"
    adapter = _train_quick_adapter(folder, train, run / "adapter")
    update_run(run, run_id=run.name, status="completed", method="lora", base_model="smollm2-135m-instruct",
               adapter_dir=str(adapter), dataset_dir=str(dataset))
    tok = load_tokenizer(folder)
    prompts = [prompt_ids(tok, r["messages"][:-1]) for r in held_out]
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(base, adapter).eval()
    eos = [tok.eos_token_id]
    refs = [hf_greedy(tuned, p, MAX_NEW, eos) for p in prompts]
    with torch.no_grad(), tuned.disable_adapter():  # the base alone would choose other tokens: the adapter matters
        seqs = [torch.tensor([p + r]) for p, r in zip(prompts, refs, strict=True)]
        plain = [tuned(s).logits[0, len(p) - 1: -1].argmax(-1).tolist() for s, p in zip(seqs, prompts, strict=True)]
    assert sum(a != b for pl, r in zip(plain, refs, strict=True) for a, b in zip(pl, r, strict=True)) >= 5
    return tmp / "proj", folder, adapter, prompts, refs, eos, run


def _llama(path: Path, lora: Path | None = None):
    kw = {"lora_path": str(lora)} if lora else {}
    # One thread for prompt and decode alike (n_threads_batch defaults to every core; OpenMP's spinning makes a
    # busy shared CI machine crawl).
    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=512, logits_all=True, verbose=False,
                           n_threads=1, n_threads_batch=1, seed=0, **kw)


def test_gguf_lora_on_the_packaged_base_agrees_with_transformers(setup, tmp_path):
    from llmtailor.config import ModelConfig
    from llmtailor.export.gguf import base_gguf, export_adapter_gguf
    from llmtailor.export.verify import compare

    _, _, adapter, prompts, refs, eos, _ = setup
    base = base_gguf(ModelConfig())
    for dtype in ("f32", "f16"):
        path = export_adapter_gguf(adapter, base, tmp_path / f"adapter-{dtype}.gguf", dtype=dtype)
        agreement, _ = compare(_llama(base, path), prompts, refs, MAX_NEW, eos)
        print(f"adapter {dtype}: {agreement.as_dict()}")
        assert agreement.teacher_forced >= 0.95 and agreement.free_running >= 0.9, agreement.as_dict()
    without, _ = compare(_llama(base), prompts, refs, MAX_NEW, eos)  # llama.cpp really applies the adapter
    assert without.teacher_forced < agreement.teacher_forced


def test_merged_f16_agrees_with_transformers_and_cli_quantizes(setup):
    import gguf

    from llmtailor.export.verify import compare

    project, _, _, prompts, refs, eos, run = setup
    res = tailor("export", "-c", "tailor.yaml", "--run", run.name, "--merge", "--json", cwd=project)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    agreement, _ = compare(_llama(Path(out["path"])), prompts, refs, MAX_NEW, eos)
    print(f"merged f16: {agreement.as_dict()}")
    assert agreement.teacher_forced >= 0.95 and agreement.free_running >= 0.9, agreement.as_dict()

    res = tailor("export", "-c", "tailor.yaml", "--run", run.name, "--merge", "--quant", "q8_0", "--format", "ollama",
                 "--json", cwd=project)
    assert res.returncode == 0, res.stderr[-2000:]
    q8 = json.loads(res.stdout)
    assert gguf.GGUFReader(q8["path"]).fields["general.file_type"].contents() == 7 and q8["size_mb"] < out["size_mb"]
    modelfile = Path(q8["modelfile"]).read_text()
    assert "FROM ./model-q8_0.gguf" in modelfile and "<|im_start|>" in modelfile
    agreement, _ = compare(_llama(Path(q8["path"])), prompts, refs, MAX_NEW, eos)
    print(f"merged q8_0: {agreement.as_dict()}")
    assert agreement.teacher_forced >= 0.9
    lineage = tailor("registry", "lineage", q8["registry_id"], "-c", "tailor.yaml", "--json", cwd=project)
    kinds = [c["kind"] for c in json.loads(lineage.stdout)["lineage"]]
    assert kinds[:3] == ["run", "adapter", "export"] and kinds.count("export") == 2

    res = tailor("export", "-c", "tailor.yaml", "--run", run.name, "--merge", "--quant", "q7_x", cwd=project)
    assert res.returncode == 1 and "unknown quantization 'q7_x'" in res.stderr and "q4_k_m" in res.stderr
