"""SIGKILL processes writing to the SQLite registry at once (dataset records, request-log rows and gated
promotions, as the CLI and the server write them); afterwards the file passes `PRAGMA integrity_check`, every
write a process saw committed is there, and the registry takes new writes at once (no stale lock)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from llmtailor.registry.db import Registry
from tests.faults.conftest import ROOT

WRITER = r"""
import sys, pathlib
from llmtailor.registry.db import Registry
url, name, acks = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
reg = Registry(url, timeout=30)
with acks.open("a", buffering=1) as out:
    i = 0
    while True:
        reg.record_dataset(f"{name}-{i}", f"/data/{name}/{i}", {"rows_kept": i})
        out.write(f"ds-{name}-{i}\n")
        reg.log_request(id=f"req-{name}-{i}", model="m", status=200, latency_ms=1.0, prompt="p" * 200)
        out.write(f"req-{name}-{i}\n")
        i += 1
"""

PROMOTER = r"""
import sys, pathlib
from llmtailor.registry.db import Registry
url, acks = sys.argv[1], pathlib.Path(sys.argv[2])
reg = Registry(url, timeout=30)
with acks.open("a", buffering=1) as out:
    i = 0
    while True:
        dep = reg.promote(f"ad-r{i % 2}", "staging", force=True)
        out.write(dep["id"] + "\n")
        i += 1
"""


def _acked(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    return [x for x in lines[:-1] if x]  # the last piece may be cut by the kill


def test_kill_concurrent_registry_writers_loses_no_committed_row(tmp_path):
    db = tmp_path / "registry.db"
    url = f"sqlite:///{db}"
    with Registry(url) as reg:  # two adapters to promote back and forth
        for rid in ("r0", "r1"):
            (tmp_path / rid).mkdir()
            reg.record_run(tmp_path / rid, {"run_id": rid, "status": "completed", "method": "lora"})
            reg.record_adapter(rid, tmp_path / rid, "lora", "base")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs, acks = [], []
    for name in ("a", "b", "c"):
        acks.append(tmp_path / f"{name}.acks")
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, url, name, str(acks[-1])], env=env,
                                      stderr=subprocess.PIPE, text=True))
    acks.append(tmp_path / "promote.acks")
    procs.append(subprocess.Popen([sys.executable, "-c", PROMOTER, url, str(acks[-1])], env=env,
                                  stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 60
    while min(len(_acked(a)) for a in acks) < 20:
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, dead[0].stderr.read()[-3000:]
        assert time.monotonic() < deadline, [len(_acked(a)) for a in acks]
        time.sleep(0.02)
    for p in procs:  # one at a time, each while the others keep writing
        p.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    for p in procs:
        p.wait()
        assert p.returncode == -signal.SIGKILL

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        datasets = {r[0] for r in con.execute("SELECT id FROM datasets")}
        requests = {r[0] for r in con.execute("SELECT id FROM requests")}
        chain = con.execute("SELECT id, previous_id FROM deployments ORDER BY id").fetchall()
    finally:
        con.close()
    for a in acks[:3]:
        for ident in _acked(a):
            assert ident in (datasets if ident.startswith("ds-") else requests), ident
    assert {f"dep-{i}" for i, _ in chain} >= set(_acked(acks[3]))
    assert [prev for _, prev in chain] == [None] + [i for i, _ in chain[:-1]]  # one history, never forked
    with Registry(url, timeout=2) as reg:  # writable at once after the kill: no lock left behind
        reg.record_dataset("after", "/data/after")
        assert reg.current("staging") is not None and reg.show("ds-after")["path"] == "/data/after"
