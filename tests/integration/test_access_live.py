"""Access changes reach a running `tailor serve` within one second, seen from another process.

The server runs as a real subprocess (tiny random model, transformers engine, a RAG alias over markdown files,
two registered adapters). This test process changes what it may serve with the `tailor` commands an operator
runs (invoked in this process, so the clock starts the moment they return): a stricter access level on a
document, a document deleted from the index, a revoked key, a rollback. It then polls every 50 ms and asserts
that a request sent within 1.0 s of the command returning observes the change; the printed figures are the
measured times, with each observing request's own latency. Each poll checks what the caller sees: the RAG
passages and citations, the status code, and which adapter answered (the greedy text of each adapter is known
beforehand; the registry's request log confirms the adapter id).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
POLL_S = 0.05
LIMIT_S = 1.0
PROMPT = [{"role": "user", "content": "Say something about refunds."}]
DOCS = {
    "refunds.md": "# Refunds\n\nAcme refunds are paid within 14 days of the request.\n",
    "payroll.md": "# Payroll\n\nAcme payroll runs on the 25th of each month; salaries are confidential.\n",
    "holidays.md": "# Holidays\n\nThe Acme office is closed between Christmas and New Year.\n",
}
MEASURED: dict[str, dict[str, float]] = {}


def tailor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "llmtailor.cli.main", *args], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, f"tailor {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir):
    """The project, its keys and a running server; yields what the tests need to reach and change it."""
    import httpx

    from tests.unit.serve.conftest import free_port, make_run, wait_healthy

    root = tmp_path_factory.mktemp("access-live")
    for name, text in DOCS.items():
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / name).write_text(text)
    make_run(root / "runs", "run-a", 21, True)
    make_run(root / "runs", "run-b", 22, True)
    (root / "tailor.yaml").write_text(
        "project: acme\nruns_dir: runs\n"
        f"model: {{base_model: {json.dumps(str(tiny_model_dir))}, device: cpu, precision: fp32}}\n"
        "rag:\n  index_dir: index\n  embedding: {model: hashing}\n  search: {mode: dense}\n"
        "  answer: {min_score: 0.0}\n"
        "serve:\n  base_name: tiny\n  max_tokens_limit: 8\n  max_tokens_default: 4\n  rate_limit_per_minute: 100000\n"
        "  aliases:\n    handbook: {index: index, top_k: 3}\n"
    )
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmtailor.cli.main", "serve", "--port", str(port),
                             "--engine", "transformers"], cwd=root, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def keys() -> dict[str, str]:
            out = {}
            for who, args in (("operator", ["--models", "*"]), ("reader", ["--models", "*", "--level", "public"]),
                              ("hr", ["--models", "handbook", "--groups", "hr", "--level", "confidential"]),
                              ("victim", ["--models", "tiny,handbook"])):
                r = tailor("keys", "create", "--tenant", "acme", *args, "--name", who, "--json", cwd=root)
                out[who] = json.loads(r.stdout)
            return out

        def deploy() -> None:
            tailor("promote", "run-a", "--to", "production", cwd=root)
            tailor("promote", "run-b", "--to", "production", cwd=root)

        with ThreadPoolExecutor(3) as pool:  # the server loads meanwhile; it reads all of this per request
            made = pool.submit(keys)
            jobs = [pool.submit(tailor, "rag", "ingest", "docs", "--tenant", "acme", "--json", cwd=root),
                    pool.submit(deploy)]
            created = made.result()
            for j in jobs:
                j.result()
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, url, timeout=180, poll=0.2)
        with httpx.Client(base_url=url, timeout=30) as http:
            yield {"root": root, "http": http, "keys": {k: v["key"] for k, v in created.items()},
                   "key_ids": {k: v["id"] for k, v in created.items()}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if MEASURED:
            print("\npropagation, from the command returning: " + json.dumps(MEASURED))


def change(root: Path, *args: str) -> None:
    """Run a `tailor` command in this process (the server is another process): the same code as the console
    script, and the clock starts the moment it returns, with no interpreter shutdown in between."""
    from typer.testing import CliRunner

    from llmtailor.cli.main import app

    r = CliRunner().invoke(app, [*args, "-c", str(root / "tailor.yaml")])
    assert r.exit_code == 0, f"tailor {' '.join(args)} failed: {r.output}{r.exception!r}"


def chat(live: dict[str, Any], key: str, model: str, content: str = "Say something about refunds.",
         max_tokens: int = 2) -> Any:
    return live["http"].post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": model, "messages": [{"role": "user", "content": content}],
                                   "max_tokens": max_tokens, "temperature": 0})


def sources(resp: Any) -> set[str]:
    """Every document the answer used: passages in the context and citations."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return {p["source"] for key in ("passages", "citations") for p in body.get(key) or []}


def time_until(seen: Callable[[], bool], what: str, limit: float = 5.0, t0: float | None = None) -> float:
    """Seconds from now until a request that observes the change was sent, polling every 50 ms.

    The request's own latency is not counted (it is recorded too): on a loaded machine one answer can take longer
    than the propagation being measured, and the request was sent after the change had reached the server's state
    for the earlier polls that did not see it.
    """
    t0 = time.monotonic() if t0 is None else t0
    polls = 0
    while True:
        sent = time.monotonic()
        polls += 1
        if seen():
            answered = time.monotonic()
            MEASURED[what] = {"sent_s": round(sent - t0, 3), "answered_s": round(answered - t0, 3), "polls": polls,
                              "request_s": round(answered - sent, 3)}
            return sent - t0
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{what}: not observed within {limit} s ({polls} polls)")
        time.sleep(POLL_S)


@pytest.mark.integration
def test_stricter_access_level_hides_the_passage(live):
    reader, operator, hr = live["keys"]["reader"], live["keys"]["operator"], live["keys"]["hr"]
    before = sources(chat(live, reader, "handbook", "When does payroll run?"))
    assert "docs/payroll.md" in before, before
    change(live["root"], "rag", "ingest", str(live["root"] / "docs" / "payroll.md"), "--tenant", "acme",
           "--access-level", "confidential", "--groups", "hr", "--json")
    took = time_until(lambda: "docs/payroll.md" not in sources(chat(live, reader, "handbook", "When does payroll "
                                                                                             "run?")),
                      "(a) stricter level")
    assert took <= LIMIT_S, took
    # Other documents stay visible; the operator's key (models '*' but public clearance, no hr group) lost it too,
    # and a key with the hr group and confidential clearance still gets it: access changed, not the index.
    assert "docs/refunds.md" in sources(chat(live, reader, "handbook", "When does payroll run?"))
    assert "docs/payroll.md" not in sources(chat(live, operator, "handbook", "When does payroll run?"))
    assert "docs/payroll.md" in sources(chat(live, hr, "handbook", "When does payroll run?"))


@pytest.mark.integration
def test_deleted_document_is_no_longer_cited(live):
    from llmtailor.errors import TailorError
    from llmtailor.rag.index import delete_sources

    reader = live["keys"]["reader"]
    assert "docs/holidays.md" in sources(chat(live, reader, "handbook", "Is the office closed at Christmas?"))
    with pytest.raises(TailorError, match="no indexed document"):  # a typo never passes as a deletion
        delete_sources(live["root"] / "index", [str(live["root"] / "docs" / "holiday.md")])
    change(live["root"], "rag", "delete", str(live["root"] / "docs" / "holidays.md"), "--json")
    took = time_until(lambda: "docs/holidays.md" not in sources(chat(live, reader, "handbook", "Is the office "
                                                                                               "closed?")),
                      "(b) deleted document")
    assert took <= LIMIT_S, took
    assert (live["root"] / "docs" / "holidays.md").exists()  # the file stays; only the index forgets it


@pytest.mark.integration
def test_revoked_key_is_refused(live):
    victim = live["keys"]["victim"]
    assert chat(live, victim, "tiny").status_code == 200
    change(live["root"], "keys", "revoke", live["key_ids"]["victim"])
    took = time_until(lambda: chat(live, victim, "tiny").status_code == 401, "(c) revoked key")
    assert took <= LIMIT_S, took
    err = chat(live, victim, "tiny").json()["error"]
    assert err["code"] == "invalid_api_key"


@pytest.mark.integration
def test_rollback_serves_the_previous_adapter(live):
    key = live["keys"]["operator"]

    def answer(model: str) -> tuple[str, str]:
        r = chat(live, key, model, "hello", max_tokens=4)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"], r.json()["id"]

    a, b = answer("ad-run-a")[0], answer("ad-run-b")[0]
    assert a != b, "the two random adapters must answer differently for this test to tell them apart"
    assert answer("acme")[0] == b  # production is run-b (promoted last)
    change(live["root"], "rollback")
    t0 = time.monotonic()
    last: list[str] = []

    def deployed() -> bool:  # what the server resolves the project name with (no generation: a precise clock)
        r = live["http"].get("/health", headers={"Authorization": f"Bearer {key}"})
        return r.json()["deployments"]["production"] == "ad-run-a"

    def on_a() -> bool:
        text, rid = answer("acme")
        last[:] = [rid]
        return text == a

    took = time_until(deployed, "(d) rollback, /health", t0=t0)
    assert took <= LIMIT_S, took
    took = time_until(on_a, "(d) rollback, answer", t0=t0)
    assert took <= LIMIT_S, took
    # The registry's request log (written by the server in the background) names the adapter that answered.
    from llmtailor.config import load_config
    from llmtailor.registry.db import Registry, RequestLog

    with Registry.for_config(load_config(live["root"] / "tailor.yaml")) as reg:
        deadline = time.monotonic() + 10
        while True:
            with reg.session() as s:
                row = s.get(RequestLog, last[0])
                adapter = row.adapter_id if row is not None else None
            if adapter is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert adapter == "ad-run-a"


def test_deployment_poll_is_not_starved_by_busy_request_threads(tiny_model_dir, tmp_path):
    """Not marked integration (tiny in-process app): the poll kept its period while every worker thread of the
    event loop's default pool was busy with slow requests (RAG answers, guardrails and token counts all run there),
    so a rollback could wait for the slowest of them instead of `serve.deployment_poll_s`."""
    import asyncio

    from fastapi.testclient import TestClient

    from llmtailor.config import TailorConfig
    from llmtailor.registry.db import Registry
    from llmtailor.registry.hooks import sync_run
    from llmtailor.serve.app import create_app
    from tests.unit.serve.conftest import build_engine, make_run

    for run, seed in (("run-good", 31), ("run-other", 32)):
        make_run(tmp_path / "runs", run, seed, True)
    cfg = TailorConfig.model_validate({
        "project": "acme", "runs_dir": str(tmp_path / "runs"), "registry": {"url": f"sqlite:///{tmp_path}/r.db"},
        "model": {"base_model": str(tiny_model_dir), "device": "cpu", "precision": "fp32"},
        "serve": {"base_name": "tiny", "max_tokens_limit": 8, "max_tokens_default": 4, "deployment_poll_s": 0.2}})
    reg = Registry(cfg.registry.url)
    for run in ("run-good", "run-other"):
        sync_run(reg, cfg.runs_dir / run)
    reg.promote("run-good", "production")
    app = create_app(cfg, engine=build_engine(), registry=reg)
    with TestClient(app) as client:  # the lifespan starts the deployment poll
        server = app.state.server
        deadline = time.monotonic() + 5
        while (server.deployments.get("production") is None and time.monotonic() < deadline):
            time.sleep(0.05)
        assert server.deployments["production"].adapter_id == "ad-run-good"

        async def occupy() -> None:  # four rounds of slow requests' blocking work for every worker of the pool
            loop = asyncio.get_running_loop()
            for _ in range(4 * ((os.cpu_count() or 1) + 4)):  # asyncio's default pool size
                loop.run_in_executor(None, time.sleep, 0.5)

        client.portal.call(occupy)
        reg.promote("run-other", "production")
        t0 = time.monotonic()
        while server.deployments["production"].adapter_id != "ad-run-other" and time.monotonic() - t0 < 5:
            time.sleep(0.02)
        took = time.monotonic() - t0
        assert server.deployments["production"].adapter_id == "ad-run-other"
        assert took <= LIMIT_S, f"the deployment change took {took:.2f} s to reach the server"
    reg.close()


def test_rag_delete_by_folder_and_by_stored_source(tmp_path):
    """`tailor rag delete`'s matching (not marked integration: the hashing embedder, no model): a folder removes
    every document under it and nothing beside it, a record is named by its stored source, and the index version
    moves on."""
    from llmtailor.errors import TailorError
    from llmtailor.rag.config import RagConfig
    from llmtailor.rag.index import Index, delete_sources
    from llmtailor.rag.ingest import Record, ingest, ingest_records

    rag = RagConfig.model_validate({"embedding": {"model": "hashing"}})
    for sub, name in (("hr", "pay.md"), ("hr", "leave.md"), ("hr2", "other.md")):
        (tmp_path / "docs" / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / sub / name).write_text(f"# {name}\n\nText of {name} in {sub}.\n")
    index = tmp_path / "index"
    ingest([tmp_path / "docs"], index, rag)
    ingest_records([Record("faq-1", "Refunds take 14 days.")], index, rag)
    before = Index.read_info(index)["version"]
    out = delete_sources(index, [str(tmp_path / "docs" / "hr"), "record:faq-1"], rag)
    assert sorted(Path(s).name if "/" in s else s for s in out["deleted"]) == ["leave.md", "pay.md", "record:faq-1"]
    info = Index.read_info(index)
    assert info["sources"] == 1 and info["version"] != before  # docs/hr2 (a name sharing the prefix) stays
    with pytest.raises(TailorError, match="no indexed document"):
        delete_sources(index, [str(tmp_path / "docs" / "hr")], rag)
