"""Concurrent promotes and rollbacks, from real OS processes, on a SQLite file and on PostgreSQL.

Each promote (and rollback) reads the stage's current deployment, checks the gates and writes the new row in one
transaction that serialises against the others, so the history stays one chain: every row acts on the row just
before it (a promote's `previous_id` is that row; a rollback rolls back exactly that row), no two rows share a
predecessor, and rolling back walks the chain back one step at a time.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from llmtailor.registry.db import Registry

STAGE = "production"


# ---- a small harness: N spawned processes, released together, each returning its errors -------------------
def _child(target: Any, args: tuple, barrier: Any, out: Any, index: int) -> None:
    try:
        out.put((index, target(*args, barrier=barrier), None))
    except BaseException:  # reported to the test, which fails with the child's traceback
        out.put((index, None, traceback.format_exc()))


def run_processes(target: Any, args_list: list[tuple], timeout: float = 240.0) -> list[Any]:
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


# ---- workers (module level: spawned processes import them) --------------------------------------------
def promote_rounds(url: str, adapter_id: str, rounds: int, *, barrier: Any) -> list[str]:
    reg = Registry(url)
    errors = []
    try:
        for r in range(rounds):
            barrier.wait(timeout=60)
            try:
                reg.promote(adapter_id, STAGE, note=f"{adapter_id} round {r}")
            except Exception as e:  # counted: the test wants none
                errors.append(f"{type(e).__name__}: {e}")
    finally:
        reg.close()
    return errors


def rollback_rounds(url: str, rounds: int, *, barrier: Any) -> list[str]:
    reg = Registry(url)
    errors = []
    try:
        for _ in range(rounds):
            barrier.wait(timeout=60)
            try:
                reg.rollback(STAGE)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
    finally:
        reg.close()
    return errors


# ---- helpers ----------------------------------------------------------------------------------------
def register_adapters(url: str, root: Path, names: list[str]) -> None:
    """Registered runs with adapter folders and passing evaluation gates, ready to promote to production."""
    reg = Registry(url)
    for name in names:
        run_dir = root / "runs" / name
        (run_dir / "adapter").mkdir(parents=True)
        reg.record_run(run_dir, {"run_id": name, "status": "completed", "method": "lora", "base_model": "m"})
        reg.record_adapter(name, run_dir / "adapter", "lora", "m")
        reg.record_evaluation(name, run_dir / "eval.json", {"gates": {"passed": True}})
    reg.close()


def stage_rows(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            q = text("SELECT id, action, adapter_id, previous_id, note FROM deployments WHERE stage = :s ORDER BY id")
            return [dict(r._mapping) for r in con.execute(q, {"s": STAGE})]
    finally:
        engine.dispose()


def chain_breaks(rows: list[dict[str, Any]]) -> list[str]:
    """Rows that do not act on the row just before them (empty for a single chain)."""
    bad = []
    for before, row in zip([None, *rows], rows, strict=False):
        before_id = before["id"] if before else None
        if row["action"] == "rollback":
            if not (row["note"] or "").startswith(f"rollback of dep-{before_id} "):
                bad.append(f"dep-{row['id']} ({row['note']}) does not roll back dep-{before_id}")
        elif row["previous_id"] != before_id:
            bad.append(f"dep-{row['id']} follows dep-{row['previous_id']}, not dep-{before_id}")
    promotes = [r["previous_id"] for r in rows if r["action"] != "rollback"]
    if len(set(promotes)) != len(promotes):
        bad.append("two promotions share a predecessor (forked history)")
    return bad


# ---- tests ------------------------------------------------------------------------------------------
def test_two_processes_promoting_at_the_same_moment_keep_one_chain(registry_url, tmp_path):
    rounds = 15
    register_adapters(registry_url, tmp_path, ["a", "b"])
    results = run_processes(promote_rounds, [(registry_url, "ad-a", rounds), (registry_url, "ad-b", rounds)])
    assert results == [[], []]  # no "database is locked", no other failure
    rows = stage_rows(registry_url)
    assert len(rows) == 2 * rounds
    assert chain_breaks(rows) == []
    # Rolling back walks the chain: each rollback brings back the adapter of the promotion before.
    reg = Registry(registry_url)
    try:
        for k in range(1, 6):
            back = reg.rollback(STAGE)
            assert back["adapter_id"] == rows[-1 - k]["adapter_id"]
            assert reg.current(STAGE).adapter_id == rows[-1 - k]["adapter_id"]
    finally:
        reg.close()
    assert chain_breaks(stage_rows(registry_url)) == []


def test_two_processes_rolling_back_at_the_same_moment_each_go_one_step(registry_url, tmp_path):
    names = [f"v{i}" for i in range(10)]
    register_adapters(registry_url, tmp_path, names)
    reg = Registry(registry_url)
    try:
        for name in names:
            reg.promote(name, STAGE)
    finally:
        reg.close()
    rounds = 4  # 2 processes x 4 rounds = 8 rollbacks from v9: v1 must be current afterwards
    results = run_processes(rollback_rounds, [(registry_url, rounds), (registry_url, rounds)])
    assert results == [[], []]
    rows = stage_rows(registry_url)
    assert len(rows) == len(names) + 2 * rounds
    assert chain_breaks(rows) == []
    assert [r["adapter_id"] for r in rows[len(names):]] == [f"ad-v{i}" for i in range(8, 0, -1)]
    reg = Registry(registry_url)
    try:
        assert reg.current(STAGE).adapter_id == "ad-v1"
        assert reg.rollback(STAGE)["adapter_id"] == "ad-v0"
    finally:
        reg.close()


def test_chain_check_itself_flags_a_fork():
    """The invariant above would catch the bug: two promotions that read the same current row."""
    rows = [{"id": 1, "action": "promote", "adapter_id": "ad-a", "previous_id": None, "note": None},
            {"id": 2, "action": "promote", "adapter_id": "ad-a", "previous_id": 1, "note": None},
            {"id": 3, "action": "promote", "adapter_id": "ad-b", "previous_id": 1, "note": None}]
    assert chain_breaks(rows) == ["dep-3 follows dep-1, not dep-2", "two promotions share a predecessor (forked "
                                                                    "history)"]
