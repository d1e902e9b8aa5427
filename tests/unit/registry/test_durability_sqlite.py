"""The registry shared by several OS processes at once: the server's request-log writer, CLI commands (promote,
rollback, records, keys) and readers (`tailor monitor`, `tailor registry ls`), on one SQLite file (and the same
workload on PostgreSQL).

SQLite is opened in WAL mode (readers never block the writer, nor the writer them) with a busy timeout and
synchronous=NORMAL, and every writing transaction starts with BEGIN IMMEDIATE, so writers queue for the lock
instead of failing with "database is locked" or overwriting each other's reads.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from llmtailor.errors import TailorError
from llmtailor.registry.db import Registry


# ---- a small harness: N spawned processes, released together, each returning its result -------------------
def _child(target: Any, args: tuple, barrier: Any, out: Any, index: int) -> None:
    try:
        out.put((index, target(*args, barrier=barrier), None))
    except BaseException:  # reported to the test, which fails with the child's traceback
        out.put((index, None, traceback.format_exc()))


def run_processes(target: Any, args_list: list[tuple], timeout: float = 300.0) -> list[Any]:
    """Run target(*args, barrier=...) in one spawned process per args; results in args order."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(len(args_list))
    procs = [ctx.Process(target=_child, args=(target, args, barrier, out, i)) for i, args in enumerate(args_list)]
    for p in procs:
        p.start()
    try:
        got = dict((i, (res, tb)) for i, res, tb in (out.get(timeout=timeout) for _ in procs))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    crashed = [tb for _, tb in got.values() if tb]
    assert not crashed, "a worker process crashed:\n" + "\n".join(crashed)
    return [got[i][0] for i in range(len(args_list))]


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


# ---- workers (module level: spawned processes import them) --------------------------------------------
def log_writer(url: str, who: int, rows: int, secret: str, *, barrier: Any) -> dict[str, Any]:
    """The server's request-log thread: one INSERT per request, and a key lookup per request as auth does."""
    reg = Registry(url)
    errors: list[str] = []
    barrier.wait(timeout=120)
    t0 = time.perf_counter()
    for j in range(rows):
        try:
            if reg.find_key(secret) is None:
                errors.append("key lookup returned None")
            reg.log_request(id=f"req-{who}-{j}", model="support-bot", status=200, latency_ms=1.0, tenant="acme")
        except Exception as e:
            errors.append(_err(e))
    reg.close()
    return {"errors": errors, "seconds": time.perf_counter() - t0}


def promoter(url: str, adapters: list[str], rounds: int, dataset: str, *, barrier: Any) -> dict[str, Any]:
    """Operators and CI: promotions, a rollback now and then, and the same dataset recorded by several runs."""
    reg = Registry(url)
    errors: list[str] = []
    barrier.wait(timeout=120)
    for r in range(rounds):
        try:
            reg.record_dataset(dataset, f"/data/{dataset}", {"rows": 10})
            reg.promote(adapters[r % len(adapters)], "production")
            if r % 4 == 3:
                reg.rollback("production")
        except Exception as e:
            errors.append(_err(e))
    reg.close()
    return {"errors": errors}


def recorder(url: str, root: str, runs: int, dataset: str, *, barrier: Any) -> dict[str, Any]:
    """A training pipeline's hooks: dataset, run, adapter, evaluation; plus keys created and revoked."""
    reg = Registry(url)
    errors: list[str] = []
    barrier.wait(timeout=120)
    for j in range(runs):
        try:
            name = f"new-{j}"
            run_dir = Path(root) / "runs" / name
            reg.record_dataset(dataset, f"/data/{dataset}", {"rows": 10})
            reg.record_run(run_dir, {"run_id": name, "dataset_hash": dataset, "status": "completed"})
            reg.record_adapter(name, run_dir / "adapter", "lora", "m")
            reg.record_evaluation(name, run_dir / "eval.json", {"gates": {"passed": True}})
            kid, _ = reg.create_key(f"t{j}", [], ["*"])
            reg.revoke_key(f"key-{kid}")
        except Exception as e:
            errors.append(_err(e))
    reg.close()
    return {"errors": errors}


def reader(url: str, loops: int, *, barrier: Any) -> dict[str, Any]:
    """`tailor monitor` / `tailor registry ls` and the server's deployment poll, reading meanwhile."""
    reg = Registry(url)
    errors: list[str] = []
    barrier.wait(timeout=120)
    for _ in range(loops):
        try:
            reg.requests()
            reg.list()
            reg.current("production")
        except Exception as e:
            errors.append(_err(e))
    reg.close()
    return {"errors": errors}


def operator(url: str, key_id: str, *, barrier: Any) -> None:
    """`tailor keys revoke` and `tailor rollback` from another process; returns when both are committed."""
    barrier.wait(timeout=120)
    reg = Registry(url)
    reg.revoke_key(key_id)
    reg.rollback("production")
    reg.close()
    return None


def opener(url: str, *, barrier: Any) -> list[str]:
    barrier.wait(timeout=120)
    try:
        reg = Registry(url)
        reg.record_dataset("same", "/data/same", {})
        reg.close()
        return []
    except Exception as e:
        return [_err(e)]


# ---- helpers ----------------------------------------------------------------------------------------
def register_adapters(url: str, root: Path, names: list[str]) -> None:
    reg = Registry(url)
    for name in names:
        run_dir = root / "runs" / name
        (run_dir / "adapter").mkdir(parents=True)
        reg.record_run(run_dir, {"run_id": name, "status": "completed", "method": "lora", "base_model": "m"})
        reg.record_adapter(name, run_dir / "adapter", "lora", "m")
        reg.record_evaluation(name, run_dir / "eval.json", {"gates": {"passed": True}})
    reg.close()


def backend_url(backend: str, tmp_path: Path, request: Any) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'reg.db'}"
    return request.getfixturevalue("pg_cluster").database()


def scalar(url: str, sql: str) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def chain_breaks(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            rows = [dict(r._mapping) for r in con.execute(text(
                "SELECT id, action, previous_id, note FROM deployments WHERE stage = 'production' ORDER BY id"))]
    finally:
        engine.dispose()
    bad = []
    for before, row in zip([None, *rows], rows, strict=False):
        before_id = before["id"] if before else None
        ok = ((row["note"] or "").startswith(f"rollback of dep-{before_id} ") if row["action"] == "rollback"
              else row["previous_id"] == before_id)
        if not ok:
            bad.append(f"dep-{row['id']}")
    return bad


# ---- tests ------------------------------------------------------------------------------------------
def test_sqlite_is_opened_in_wal_mode_with_a_busy_timeout_and_normal_sync(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    try:
        with reg.engine.connect() as con:
            assert con.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert con.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
            assert con.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: safe in WAL, no fsync per commit
            assert con.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        reg.close()
    raw = sqlite3.connect(tmp_path / "reg.db")  # WAL is a property of the file: every other client gets it too
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    short = Registry(f"sqlite:///{tmp_path / 'reg.db'}", timeout=0.5)
    with short.engine.connect() as con:
        assert con.exec_driver_sql("PRAGMA busy_timeout").scalar() == 500
    short.close()


_HOLD_READ = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN")
con.execute("SELECT count(*) FROM requests").fetchone()
print("reading", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


def test_a_long_reader_in_another_process_does_not_block_the_request_log_writer(tmp_path):
    """e.g. `tailor monitor` reading the log, or a backup, while the server writes: WAL lets both go on."""
    db = tmp_path / "reg.db"
    url = f"sqlite:///{db}"
    reg = Registry(url, timeout=1.0)
    reg.log_request(id="before", model="m", status=200, latency_ms=1.0)
    hold = subprocess.Popen([sys.executable, "-c", _HOLD_READ, str(db), "4"], stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "reading"
        t0 = time.perf_counter()
        for i in range(20):
            reg.log_request(id=f"during-{i}", model="m", status=200, latency_ms=1.0)
        kid, secret = reg.create_key("acme", [], ["*"])
        took = time.perf_counter() - t0
    finally:
        hold.wait(timeout=30)
    assert took < 1.0, f"writes waited {took:.2f}s for a reader"
    assert scalar(url, "SELECT count(*) FROM requests") == 21
    reg.close()


def test_a_plain_copy_after_close_has_the_writes_while_another_process_keeps_the_file_open(tmp_path):
    """WAL keeps new commits in registry.db-wal; close() folds them into registry.db, so `cp registry.db` (backups,
    test fixtures) still works while a server has the registry open."""
    import shutil

    url = f"sqlite:///{tmp_path / 'reg.db'}"
    server = Registry(url)
    server.requests()  # an open, pooled connection
    cli = Registry(url)
    cli.create_key("acme", [], ["*"])
    cli.close()
    shutil.copy(tmp_path / "reg.db", tmp_path / "copy.db")
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("SELECT tenant FROM api_keys").fetchall() == [("acme",)]
    copy.close()
    server.close()


def test_a_writer_waits_for_the_lock_and_reports_it_only_after_the_busy_timeout(tmp_path):
    db = tmp_path / "reg.db"
    reg = Registry(f"sqlite:///{db}", timeout=0.3)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.perf_counter()
        with pytest.raises(TailorError, match="locked by another process"):
            reg.log_request(id="x", model="m", status=200, latency_ms=1.0)
        assert 0.25 < time.perf_counter() - t0 < 5
        assert reg.requests() == []  # a reader is not blocked by the writer
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    reg.log_request(id="x", model="m", status=200, latency_ms=1.0)
    reg.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_long_lived_registry_sees_a_revoke_and_a_rollback_on_its_next_lookup(backend, tmp_path, request):
    """The server keeps one Registry open; it caches neither keys nor deployments, so an access change made by
    another process counts from the server's next lookup (the deployment poll adds its interval on top)."""
    url = backend_url(backend, tmp_path, request)
    register_adapters(url, tmp_path, ["a", "b"])
    server = Registry(url)
    try:
        kid, secret = server.create_key("acme", [], ["*"])
        server.promote("a", "production")
        server.promote("b", "production")
        assert server.find_key(secret) is not None and server.current("production").adapter_id == "ad-b"
        run_processes(operator, [(url, f"key-{kid}")])  # returns once the other process has committed both
        assert server.find_key(secret) is None  # the very next lookup: no cache, no stale snapshot
        assert server.current("production").adapter_id == "ad-a"
    finally:
        server.close()


def test_processes_opening_a_brand_new_registry_at_once_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'reg.db'}"
    results = run_processes(opener, [(url,)] * 4)
    assert results == [[]] * 4
    assert scalar(url, "SELECT count(*) FROM datasets") == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_log_writers_promotes_records_and_readers_at_once_lose_nothing(backend, tmp_path, request):
    """3 request-log writers, 2 promoters, 1 recorder, 1 reader: separate processes, started together."""
    url = backend_url(backend, tmp_path, request)
    writers, rows, rounds, runs = 3, 150, 12, 12
    register_adapters(url, tmp_path, ["a", "b", "c", "d"])
    reg = Registry(url)
    _, secret = reg.create_key("acme", [], ["*"])
    reg.close()
    jobs: list[tuple[Any, tuple]] = [(log_writer, (url, w, rows, secret)) for w in range(writers)]
    jobs += [(promoter, (url, pair, rounds, "shared")) for pair in (["ad-a", "ad-b"], ["ad-c", "ad-d"])]
    jobs += [(recorder, (url, str(tmp_path), runs, "shared")), (reader, (url, 15))]
    results = run_processes(_dispatch, [(fn, args) for fn, args in jobs])
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], f"{len(errors)} failed operations, e.g. {errors[:3]}"
    assert scalar(url, "SELECT count(*) FROM requests") == writers * rows  # no lost rows
    assert scalar(url, "SELECT count(*) FROM datasets WHERE id = 'ds-shared'") == 1
    assert scalar(url, "SELECT count(*) FROM runs") == 4 + runs
    assert scalar(url, "SELECT count(*) FROM evaluations") == 4 + runs
    assert scalar(url, "SELECT count(*) FROM api_keys WHERE revoked IS NOT NULL") == runs
    promotes = 2 * rounds
    assert scalar(url, "SELECT count(*) FROM deployments") == promotes + promotes // 4
    assert chain_breaks(url) == []


def _dispatch(fn: Any, args: tuple, *, barrier: Any) -> Any:
    return fn(*args, barrier=barrier)
