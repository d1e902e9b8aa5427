"""A tiny workbench project: a real prepared dataset (with a `<script>` row and a bad row), two run folders as
training and evaluation leave them (one passing its gates, one failing), a RAG index with two tenants, a registry.

Nothing here trains: the runs are written the way `tailor train` / `tailor eval` write them (run.json,
metrics.jsonl, config.yaml, adapter/, eval/results.json, eval/examples.jsonl), with random LoRA adapters."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmtailor.io import write_jsonl
from llmtailor.runs import update_run

SCRIPT = "<script>alert('row')</script>"


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(24):
        rows.append({"messages": [
            {"role": "user", "content": f"ticket {i}: my invoice number {1000 + i} is wrong"},
            {"role": "assistant", "content": json.dumps({"category": "billing", "priority": ["low", "high"][i % 2]})},
        ], "source": "tickets" if i % 3 else "emails"})
    rows.append({"messages": [{"role": "user", "content": SCRIPT},
                              {"role": "assistant", "content": "<b>bold</b> & done"}], "source": "tickets"})
    return rows


def write_project(root: Path, model_dir: Path) -> Path:
    data = root / "data" / "tickets.jsonl"
    write_jsonl(data, _rows())
    with data.open("a") as f:
        f.write('{"messages": [{"role": "user", "content": ""}]}\n')  # a bad row: dropped with file:line
        f.write(json.dumps(_rows()[0]) + "\n")  # line 27: an exact copy of line 1, listed as a dropped duplicate
    raw = {
        "project": "acme",
        "runs_dir": "runs",
        "model": {"base_model": str(model_dir), "device": "cpu", "precision": "fp32"},
        "data": {"sources": ["data/tickets.jsonl"], "max_seq_len": 128, "pii": {"enabled": False},
                 "split": {"eval_fraction": 0.2}},
        "train": {"learning_rate": 5e-3, "batch_size": 2, "max_steps": 400, "save_steps": 25, "warmup_ratio": 0.0,
                  "lora_r": 4, "lora_alpha": 8, "logging_steps": 1, "group_by_length": False, "precision": "fp32",
                  "threads": 1},
        "rag": {"index_dir": "index", "embedding": {"model": "hashing"}, "answer": {"min_score": 0.0,
                                                                                 "max_new_tokens": 6}},
        "serve": {"base_name": "tiny", "max_tokens_default": 6, "max_tokens_limit": 32, "batch_wait_ms": 5,
                  "deployment_poll_s": 0.2, "log_content": True,
                  "aliases": {"support-bot": {"adapter": "run-a", "index": "index", "top_k": 2}}},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
    }
    path = root / "tailor.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_run(runs: Path, run_id: str, seed: int, *, passed: bool, lr: float, answers: list[str]) -> Path:
    from tests.unit.serve.conftest import make_adapter

    run_dir = runs / run_id
    make_adapter(run_dir / "adapter", seed)
    update_run(run_dir, run_id=run_id, created=f"2026-11-30T10:0{seed % 10}:00", status="completed", method="lora",
               base_model="tiny", dataset_hash="dsh" + run_id, dataset_dir=str(runs.parent / "datasets"),
               adapter_dir=str(run_dir / "adapter"), steps=6, final_loss=0.5 + seed / 100, train_tokens_per_s=123.4)
    write_jsonl(run_dir / "metrics.jsonl", [{"step": s, "loss": 2.0 - s * lr * 20} for s in range(1, 7)])
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"project": "acme", "train": {"learning_rate": lr,
                                                                                      "lora_r": 4}}))
    metric = 0.95 if passed else 0.2
    results = {"headline_metric": "json_compliance",
               "variants": {"base": {"json_compliance": 0.1, "ci": {"json_compliance": [0.0, 0.3]}},
                            "tuned": {"json_compliance": metric, "ci": {"json_compliance": [metric - 0.1, metric]}}},
               "gates": {"passed": passed, "results": [{"text": "json_compliance >= 0.9", "passed": passed,
                                                        "reason": f"json_compliance = {metric}"}]}}
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    write_jsonl(run_dir / "eval" / "examples.jsonl",
                [{"id": i, "prompt": f"ticket {i}", "reference": "{}", "outputs": {"tuned": a},
                  "scores": {"tuned": {"json_compliance": 1.0}}} for i, a in enumerate(answers)])
    return run_dir


def build_project(root: Path, model_dir: Path) -> dict[str, Any]:
    from llmtailor.config import load_config
    from llmtailor.pipeline import prepare_stage
    from llmtailor.rag.ingest import Record, ingest_records
    from llmtailor.registry.db import Registry
    from llmtailor.registry.hooks import sync_run

    path = write_project(root, model_dir)
    cfg = load_config(path)
    version = prepare_stage(cfg, show_progress=False)
    runs = cfg.runs_dir
    make_run(runs, "run-a", 11, passed=True, lr=0.01, answers=['{"a": 1}', "same", SCRIPT])
    make_run(runs, "run-b", 12, passed=False, lr=0.02, answers=['{"a": 2}', "same", "other"])
    reg = Registry(cfg.registry.url)
    for r in ("run-a", "run-b"):
        sync_run(reg, runs / r)
    reg.close()
    ingest_records([
        Record("acme-refunds", "Acme refunds are paid within 14 days of the request.", meta={"tenant": "acme"}),
        Record("acme-payroll", "Acme payroll runs on the 25th; refunds to staff go via HR.",
               meta={"tenant": "acme", "groups": ["hr"]}),
        Record("globex-refunds", "Globex refunds take 30 days and need a receipt.", meta={"tenant": "globex"}),
    ], cfg.rag.index_dir, cfg.rag)
    return {"root": root, "config": path, "cfg": cfg, "version": version.hash}


@pytest.fixture()
def project(tmp_path, tiny_model_dir) -> dict[str, Any]:
    """A fresh project per test (each test may promote, delete runs or edit the config)."""
    return build_project(tmp_path, tiny_model_dir)


def tiny_engine() -> Any:
    from llmtailor.serve.engine import Engine
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    return Engine(build_tiny_model(tok), tok, max_batch_size=4, batch_wait_ms=5)


@contextlib.contextmanager
def open_client(project: dict[str, Any]):
    from fastapi.testclient import TestClient

    from llmtailor.ui.app import create_app

    app = create_app(project["config"], serve_engine=tiny_engine())
    with TestClient(app) as c:
        c.project = project
        c.csrf = app.state.wb.guard.csrf
        c.wb = app.state.wb
        yield c


@pytest.fixture()
def client(project):
    """A workbench on a fresh project, for tests that change it."""
    with open_client(project) as c:
        yield c


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory, tiny_model_dir):
    """One workbench for a module's read-only tests (saves building the project for each)."""
    with open_client(build_project(tmp_path_factory.mktemp("ui-shared"), tiny_model_dir)) as c:
        yield c


def running(app: Any) -> Any:
    """The workbench on a real uvicorn server on a free localhost port, in a thread."""
    from tests.unit.serve.conftest import running_server

    return running_server(app)
