"""Fixtures for the server: a tiny random model, two random LoRA adapters registered in a real SQLite registry,
keys for two tenants, and an app (TestClient) or a real uvicorn server on a free localhost port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmtailor.config import TailorConfig
from llmtailor.registry.db import Registry
from llmtailor.runs import update_run
from llmtailor.serve.app import create_app
from llmtailor.serve.engine import Engine
from tests.conftest import build_tiny_model, build_tiny_tokenizer


def make_adapter(folder: Path, seed: int, targets: list[str] | None = None, r: int = 4, **lora: Any) -> Path:
    """A LoRA adapter with large random weights, so its answers differ visibly from the base. `targets`, `r` and
    further LoraConfig fields (lora_alpha, use_dora, modules_to_save, ...) vary its shape."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(build_tiny_tokenizer())
    torch.manual_seed(seed)  # after building the base, which seeds itself
    pm = get_peft_model(base, LoraConfig(r=r, target_modules=targets or ["q_proj", "v_proj", "o_proj"],
                                         init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.mul_(20)
    pm.save_pretrained(folder)
    return folder


def make_run(runs: Path, run_id: str, seed: int, gates_passed: bool | None) -> Path:
    """A run folder as training and evaluation leave it: run.json, adapter/, eval/results.json."""
    run_dir = runs / run_id
    make_adapter(run_dir / "adapter", seed)
    update_run(run_dir, run_id=run_id, status="completed", method="lora", base_model="tiny", dataset_hash="h" + run_id,
               dataset_dir=str(runs.parent / "datasets" / run_id), adapter_dir=str(run_dir / "adapter"),
               final_loss=0.5)
    if gates_passed is not None:
        results = {"variants": {"tuned": {"json_parse_rate": 1.0 if gates_passed else 0.1}},
                   "gates": {"passed": gates_passed, "results": [{"text": "json_parse_rate >= 0.9",
                                                                  "passed": gates_passed}]}}
        (run_dir / "eval").mkdir()
        (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture(scope="session")
def project(tmp_path_factory, tiny_model_dir):
    """A project folder: config, two trained runs (one passing its gates, one failing), a RAG index."""
    from llmtailor.registry.hooks import sync_run

    root = tmp_path_factory.mktemp("serve-project")
    runs = root / "runs"
    make_run(runs, "run-good", 11, True)
    make_run(runs, "run-bad", 12, False)
    make_run(runs, "run-other", 13, True)
    raw = {
        "project": "acme",
        "runs_dir": str(runs),
        # fp32: tests compare exact tokens of a random tiny model across the multi-adapter batched forward and the
        # plain one; under bf16 their different rounding order flips near-tied argmaxes.
        "model": {"base_model": str(tiny_model_dir), "device": "cpu", "precision": "fp32"},
        "rag": {"index_dir": str(root / "index"), "embedding": {"model": "hashing"},
                "search": {"mode": "dense"}, "answer": {"min_score": 0.0, "max_new_tokens": 8}},
        "serve": {
            "base_name": "tiny", "max_tokens_limit": 64, "max_tokens_default": 8, "deployment_poll_s": 0.2,
            "batch_wait_ms": 20,
            "rate_limit_per_minute": 600, "log_content": True,
            "aliases": {
                "support-bot": {"adapter": "run-good", "index": str(root / "index"), "top_k": 2,
                                "tenants": ["acme", "globex"]},
                "acme-only": {"adapter": "run-good", "tenants": ["acme"]},
                "guarded": {"guardrails": {"injection": "block", "deny_topics": ["crypto"]}},
                "live": {"adapter": "@production"},
            },
        },
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
    }
    cfg = TailorConfig.model_validate(raw)
    (root / "tailor.yaml").write_text(cfg.to_yaml())
    reg = Registry(cfg.registry.url)
    for r in ("run-good", "run-bad", "run-other"):
        sync_run(reg, runs / r)
    _index(cfg)
    keys = {
        "acme": reg.create_key("acme", ["support"], ["*"])[1],
        "globex": reg.create_key("globex", [], ["support-bot", "tiny"])[1],
    }
    kid, revoked = reg.create_key("acme", [], ["*"])
    reg.revoke_key(f"key-{kid}")
    keys["revoked"] = revoked
    keys["slow"] = reg.create_key("acme", [], ["*"], rate_limit=3)[1]
    reg.close()
    return {"root": root, "cfg": cfg, "keys": keys}


def _index(cfg: TailorConfig) -> None:
    from llmtailor.rag.ingest import Record, ingest_records

    recs = [
        Record("acme-refunds", "Acme refunds are paid within 14 days of the request.", meta={"tenant": "acme"}),
        Record("acme-secret", "Acme payroll runs on the 25th; only HR may see this.",
               meta={"tenant": "acme", "groups": ["hr"]}),
        Record("globex-refunds", "Globex refunds take 30 days and need a receipt.", meta={"tenant": "globex"}),
    ]
    ingest_records(recs, cfg.rag.index_dir, cfg.rag)


def build_engine(**kw) -> Engine:
    tok = build_tiny_tokenizer()
    return Engine(build_tiny_model(tok), tok, **kw)


@pytest.fixture()
def client(project):
    """TestClient over a fresh app (fresh engine, shared project and registry file)."""
    from fastapi.testclient import TestClient

    cfg = project["cfg"]
    reg = Registry(cfg.registry.url)
    app = create_app(cfg, engine=build_engine(max_batch_size=8, batch_wait_ms=5), registry=reg)
    with TestClient(app) as c:
        c.keys = project["keys"]
        c.app_server = app.state.server
        yield c
    reg.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_healthy(proc, url: str, timeout: float, poll: float = 0.5) -> None:
    """Block until a server subprocess answers GET /health, failing with its output if it dies or never does."""
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError("server did not start:\n" + (proc.stdout.read() if proc.stdout else ""))
        time.sleep(poll)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app):
    """A real uvicorn server on a free localhost port, in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
