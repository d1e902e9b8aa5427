"""`tailor serve --engine vllm`: the config and registry mapped onto vLLM's command line.

The mapping is tested everywhere; starting vLLM itself needs CUDA and the vllm package (tests/integration)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from llmtailor.cli.main import app
from llmtailor.errors import TailorError
from llmtailor.registry.db import Registry
from llmtailor.serve.vllm_engine import check_vllm_available, lora_rank_limit, plan_vllm


def test_rank_limit_rounds_up_to_a_value_vllm_accepts():
    assert [lora_rank_limit(r) for r in (1, 4, 8, 9, 16, 33, 300)] == [1, 8, 8, 16, 16, 64, 320]
    with pytest.raises(TailorError, match="larger than vLLM supports"):
        lora_rank_limit(1024)


def test_plan_carries_registered_adapters_and_plain_aliases(project):
    cfg = project["cfg"]
    reg = Registry(cfg.registry.url)
    try:
        plan = plan_vllm(cfg, reg, host="0.0.0.0", port=9000, model_dir=cfg.model.base_model)
    finally:
        reg.close()
    argv = plan.argv
    assert argv[argv.index("--model") + 1] == str(cfg.model.base_model)
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    assert argv[argv.index("--port") + 1] == "9000" and argv[argv.index("--host") + 1] == "0.0.0.0"
    modules = argv[argv.index("--lora-modules") + 1:]
    served = dict(m.split("=", 1) for m in modules)
    # every registered adapter, by id, plus the alias that is only an adapter
    assert {"ad-run-good", "ad-run-bad", "ad-run-other", "acme-only"} <= set(served)
    assert served["acme-only"] == served["ad-run-good"]
    assert argv[argv.index("--max-lora-rank") + 1] == "8"  # the fixtures' adapters have r=4
    assert int(argv[argv.index("--max-loras") + 1]) <= cfg.serve.max_loaded_adapters
    # what vLLM cannot do is said, not silently dropped
    text = "\n".join(plan.not_carried)
    assert "alias 'support-bot': needs a RAG index" in text
    assert "alias 'guarded': needs guardrails" in text
    assert "per-tenant API keys" in text


def test_dora_and_full_models_are_not_passed_to_vllm(project, tmp_path):
    cfg = project["cfg"]
    good = cfg.runs_dir / "run-good" / "adapter"
    dora = tmp_path / "dora"
    shutil.copytree(good, dora)
    conf = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**conf, "use_dora": True}))
    full = tmp_path / "full"  # a full fine-tune: a model folder with config.json, no adapter_config.json
    full.mkdir()
    (full / "config.json").write_text("{}")
    # Each kind reaches plan_vllm both ways: registered in the registry and named by an alias.
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        for run_id, path, method in (("run-lora", good, "lora"), ("run-dora", dora, "dora"),
                                     ("run-full", full, "full")):
            reg.record_run(tmp_path / run_id, {"run_id": run_id, "method": method, "base_model": "tiny"})
            reg.record_adapter(run_id, path, method, "tiny")
        aliases = {"dora-bot": {"adapter": str(dora)}, "full-bot": {"adapter": str(full)},
                   "lora-bot": {"adapter": str(good)}}
        c2 = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={
            "aliases": {k: cfg.serve.aliases["acme-only"].model_copy(update=v) for k, v in aliases.items()}})})
        plan = plan_vllm(c2, reg, model_dir=cfg.model.base_model)
    finally:
        reg.close()
    assert set(plan.adapters) == {"ad-run-lora", "lora-bot"}  # only the plain LoRA adapter, under both names
    modules = plan.argv[plan.argv.index("--lora-modules") + 1:]
    assert sorted(modules) == sorted(f"{name}={good}" for name in ("ad-run-lora", "lora-bot"))
    notes = "\n".join(plan.not_carried)
    assert "'ad-run-dora': DoRA" in notes and "'dora-bot': DoRA" in notes
    assert f"'ad-run-full': {full} has no readable adapter_config.json (a full fine-tune" in notes
    assert f"alias 'full-bot': adapter '{full}' not found" in notes


def test_no_adapters_means_no_lora_flags(project):
    cfg = project["cfg"]
    c2 = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"aliases": {}})})
    plan = plan_vllm(c2, None, model_dir=cfg.model.base_model)
    assert "--enable-lora" not in plan.argv and plan.adapters == {}


def test_cli_dry_run_prints_the_command_as_json(project):
    res = CliRunner().invoke(app, ["serve", "-c", str(project["root"] / "tailor.yaml"), "--engine", "vllm",
                                   "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["engine"] == "vllm" and out["dry_run"] is True
    assert "vllm.entrypoints.openai.api_server" in out["argv"]
    assert "ad-run-good" in out["adapters"]


def test_missing_vllm_or_key_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(TailorError, match="pip install vllm"):
        check_vllm_available(False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(TailorError, match="VLLM_API_KEY"):
        check_vllm_available(True)
