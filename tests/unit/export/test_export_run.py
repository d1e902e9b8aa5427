"""`tailor export` on a tiny project: files, Modelfile, registry lineage, and the command's refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmtailor.config import TailorConfig
from llmtailor.errors import TailorError
from llmtailor.export.ollama import CHATML, template_for, write_modelfile
from llmtailor.export.project import check_request, export_run
from llmtailor.registry.db import Registry
from llmtailor.runs import update_run
from tests.unit.export.conftest import make_lora, write_base_gguf

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def project(tiny_model, tiny_tokenizer, tmp_path):
    """(config, run folder): a tiny local base with model.gguf, one completed run with a LoRA adapter."""
    folder = tmp_path / "tiny"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    write_base_gguf(tiny_model, tiny_tokenizer, folder / "model.gguf")
    cfg = TailorConfig.model_validate({
        "project": "acme", "runs_dir": str(tmp_path / "runs"), "model": {"base_model": str(folder)},
        "data": {"system_prompt": "Answer with JSON."},
        "registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}"}})
    run = tmp_path / "runs" / "20260101-000000-abcd"
    make_lora(tiny_model, run / "adapter", folder)
    update_run(run, run_id=run.name, status="completed", method="lora", base_model=str(folder),
               adapter_dir=str(run / "adapter"))
    return cfg, run


def test_export_adapter_for_ollama_is_registered_with_lineage(project):
    cfg, run = project
    res = export_run(cfg, run, fmt="ollama")
    assert Path(res.path) == run / "export" / "adapter-f32.gguf" and res.quant == "f32" and not res.merged
    modelfile = (run / "export" / "Modelfile").read_text()
    assert f"FROM {Path(res.base_gguf).resolve()}\n" in modelfile and "ADAPTER ./adapter-f32.gguf\n" in modelfile
    assert 'TEMPLATE """' + CHATML + '"""' in modelfile and 'SYSTEM """Answer with JSON."""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0" in modelfile
    reg = Registry.for_config(cfg)
    chain = reg.lineage(res.registry_id)
    assert [c["kind"] for c in chain] == ["run", "adapter", "export"]
    assert chain[-1]["id"] == res.registry_id and "adapter-f32.gguf" in chain[-1]["summary"]
    row = reg.show(res.registry_id)
    assert row["kind"] == "export" and row["adapter_id"] == f"ad-{run.name}" and row["format"] == "ollama"
    assert row["info"]["base_gguf"] == res.base_gguf
    # Exporting the same file again updates its record; a merged export is a second record.
    assert export_run(cfg, run, fmt="ollama").registry_id == res.registry_id
    merged = export_run(cfg, run, fmt="ollama", merge=True)
    assert Path(merged.path).name == "model-f16.gguf"
    assert "FROM ./model-f16.gguf\n" in (run / "export" / "Modelfile").read_text()
    assert "ADAPTER" not in (run / "export" / "Modelfile").read_text()
    assert [r["id"] for r in reg.list("export")] == [res.registry_id, merged.registry_id]


def test_requests_that_cannot_work_are_refused_before_loading_anything(project, monkeypatch):
    cfg, run = project
    with pytest.raises(TailorError, match="unknown export format 'onnx'"):
        check_request("onnx", False, None)
    with pytest.raises(TailorError, match="--quant q4_k_m quantizes a merged model: add --merge"):
        check_request("gguf", False, "q4_k_m")
    assert check_request("gguf", False, "f16") == "f16" and check_request("gguf", True, None) == "f16"
    with pytest.raises(TailorError, match="unknown quantization 'q3'.*q8_0"):
        check_request("gguf", True, "q3")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(TailorError, match=r"pip install 'llmtailor\[llamacpp\]'"):
        export_run(cfg, run, merge=True, quant="q8_0")
    full = run.parent / "full-run"
    (full / "model").mkdir(parents=True)
    (full / "model" / "config.json").write_text("{}")
    with pytest.raises(TailorError, match="full fine-tune .* --merge"):
        export_run(cfg, full)
    assert not (run / "export").exists() and not (full / "export").exists()


def test_cli_without_llama_cpp_exits_nonzero_with_the_install_hint(tmp_path):
    stub = tmp_path / "stub" / "llama_cpp"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('stubbed out for the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{stub.parent}{os.pathsep}{ROOT}"}
    res = subprocess.run([sys.executable, "-m", "llmtailor.cli.main", "export", "--merge", "--quant", "q8_0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "pip install 'llmtailor[llamacpp]'" in res.stderr and "Traceback" not in res.stderr


def test_cli_prints_what_it_wrote(project, tmp_path):
    import yaml

    from llmtailor.cli.main import app

    cfg, run = project
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump({"runs_dir": str(cfg.runs_dir), "model": {"base_model": cfg.model.base_model},
                                    "registry": {"url": cfg.registry.url}}))
    res = CliRunner().invoke(app, ["export", "-c", str(path), "--run", run.name, "--out", str(tmp_path / "o"),
                                   "--json"])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["path"] == str(tmp_path / "o" / "adapter-f32.gguf") and out["registry_id"].startswith("ex-")


def test_modelfile_templates_and_quoting(tmp_path):
    assert template_for("{{ '<|im_start|>' }}")[1] == ["<|im_end|>"]
    assert template_for("<|start_header_id|>")[1] == ["<|eot_id|>"]
    assert template_for("[INST]") == (None, [])
    model = tmp_path / "m.gguf"
    text = write_modelfile(tmp_path, model=model, chat_template="[INST]").read_text()
    assert "FROM ./m.gguf" in text and "TEMPLATE not set" in text
    with pytest.raises(TailorError, match="cannot quote"):
        write_modelfile(tmp_path, model=model, system='say """hi"""')
