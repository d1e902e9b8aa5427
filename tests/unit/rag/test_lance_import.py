"""Deferring LanceDB's REST client: an embedded table works without it, and nothing of it is missing when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, sys
from llmtailor.rag.lance_import import import_lancedb
lancedb = import_lancedb()
before = sorted(m for m in sys.modules if m.startswith("lance_namespace_urllib3_client.api"))
db = lancedb.connect(sys.argv[1])
table = db.create_table("t", data=[{"id": "a", "vector": [1.0, 0.0]}, {"id": "b", "vector": [0.0, 1.0]}])
hit = table.search([0.9, 0.1]).limit(1).to_list()[0]["id"]
import lance_namespace_urllib3_client as client
configuration = client.Configuration.__name__
after = any(m.startswith("lance_namespace_urllib3_client.api") for m in sys.modules)
print(json.dumps({"api_before": before, "hit": hit, "configuration": configuration, "api_after": after}))
"""


def _probe(tmp_path, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "db")], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_embedded_table_works_without_the_rest_client_and_the_client_loads_when_used(tmp_path):
    got = _probe(tmp_path)
    assert got["api_before"] == []  # the 0.5 s of API classes was not imported
    assert got["hit"] == "a"
    assert got["configuration"] == "Configuration" and got["api_after"]  # first use ran the real __init__


def test_the_eager_switch_imports_lancedb_as_published(tmp_path):
    got = _probe(tmp_path, LLMTAILOR_EAGER_LANCEDB="1")
    assert got["api_before"]  # the baseline of the benchmark: the client's __init__ ran at import
    assert got["hit"] == "a"
