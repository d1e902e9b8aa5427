"""The allocator settings of the `tailor` CLI: applied before torch loads, never over the user's, not for servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")

PROBE = """
import json, os, sys
sys.argv = ["tailor", *{argv!r}]
from llmtailor import cpu_memory
from llmtailor.cli.main import main
try:
    main()
except SystemExit:
    pass
print("STATE " + json.dumps({{"state": cpu_memory.state(), "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                              "torch_read": __import__("torch").empty(1) is not None}}))
"""


def _run(argv: list[str], **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_MEM"))}
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                         env={**clean, **env}, timeout=120)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("STATE "))
    return json.loads(line[len("STATE "):])


def test_cli_applies_them_for_work_commands_and_not_for_servers():
    work = _run(["data", "--help"])
    assert work["state"] == {"thp_mem_alloc": True, "malloc_keeps_memory": True} and work["thp"] == "1"
    server = _run(["serve", "--help"])
    assert server["state"] == {} and server["thp"] is None


def test_the_users_own_settings_win():
    mine = _run(["data", "--help"], THP_MEM_ALLOC_ENABLE="0", MALLOC_TRIM_THRESHOLD_="131072")
    assert mine["thp"] == "0"
    assert mine["state"] == {"thp_mem_alloc": False, "malloc_keeps_memory": False}


def test_too_late_for_torch_is_reported_not_pretended():
    code = ("import json, torch\nfrom llmtailor.cpu_memory import tune\nprint(json.dumps(tune()))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_MEM"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, timeout=120)
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["thp_mem_alloc"] is False  # torch already read its setting: not claimed
    assert state["malloc_keeps_memory"] is True  # mallopt still applies to later allocations
