"""Every workbench page renders on a real (tiny) project, escapes what it shows, and fails cleanly on bad ids."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from llmtailor.errors import TailorError
from llmtailor.io import append_jsonl
from llmtailor.runs import update_run
from llmtailor.ui.security import check_bind
from tests.ui.conftest import SCRIPT


def test_runs_page_lists_runs_with_gates(shared_client):
    page = shared_client.get("/").text
    assert 'data-run="run-a"' in page and 'data-run="run-b"' in page
    row_b = page.split('data-run="run-b"')[1].split("</tr>")[0]
    assert "FAIL" in row_b and "json_compliance 0.200" in row_b
    row_a = page.split('data-run="run-a"')[1].split("</tr>")[0]
    assert ">pass<" in row_a and "123" in row_a


def test_run_and_compare_pages(shared_client):
    run = shared_client.get("/runs/run-a").text
    assert run.count("<polyline") == 1 and "json_compliance &gt;= 0.9" in run
    page = shared_client.get("/compare", params=[("ids", "run-a"), ("ids", "run-b")]).text
    assert page.count('class="curve"') == 2  # both loss curves overlaid
    diff = page.split('id="config-diff"')[1].split("</table>")[0]
    assert "train.learning_rate" in diff and "0.01" in diff and "0.02" in diff and "lora_r" not in diff
    ladder = page.split('id="ladder"')[1].split("</table>")[0]
    assert "[0.85, 0.95]" in ladder and "[0.1, 0.2]" in ladder  # intervals side by side
    # examples where the tuned answers differ (0 and 2), not the one where they agree (1); the model's
    # `<script>` answer is shown as text
    assert "#0" in page and "#2" in page and "#1<" not in page
    assert SCRIPT not in page and "&lt;script&gt;alert(&#39;row&#39;)&lt;/script&gt;" in page


def test_compare_needs_two_runs(shared_client):
    r = shared_client.get("/compare", params={"ids": "run-a"})
    assert r.status_code == 400 and "at least two runs" in r.text


@pytest.mark.parametrize("run_id", ["nope", ".hidden", "run-a%2F..%2F..", "%3Cscript%3E"])
def test_unknown_run_id_is_a_404_page(shared_client, run_id):
    r = shared_client.get(f"/runs/{run_id}")
    assert r.status_code == 404 and "not found" in r.text.lower()
    assert "<script>" not in r.text.split("</head>")[1]


def test_run_folder_deleted_while_shown(client):
    assert 'data-run="run-b"' in client.get("/").text
    shutil.rmtree(client.project["cfg"].runs_dir / "run-b")
    assert 'data-run="run-b"' not in client.get("/").text
    r = client.get("/runs/run-b")
    assert r.status_code == 404 and "deleted" in r.text
    r = client.get("/compare", params=[("ids", "run-a"), ("ids", "run-b")])
    assert r.status_code == 404 and "run-b" in r.text
    assert client.get("/api/runs/run-b/curve").json()["error"].startswith("run 'run-b' not found")


def _events(client, run_id, on_first=None, limit=20):
    """Read SSE events from the run's stream; `on_first` runs after the first one (to change the folder)."""
    out = []
    with client.stream("GET", f"/runs/{run_id}/events") as r:
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                if len(out) == 1 and on_first:
                    on_first()
                if name in ("done", "gone") or len(out) >= limit:
                    break
    return out


def test_live_curve_streams_new_points_then_final_status(client):
    run_dir = client.project["cfg"].runs_dir / "run-a"
    update_run(run_dir, status="running")

    def later():
        def write():
            time.sleep(0.3)
            append_jsonl(run_dir / "metrics.jsonl", {"step": 7, "loss": 0.123})
            time.sleep(0.8)
            update_run(run_dir, status="completed")
        threading.Thread(target=write, daemon=True).start()

    events = _events(client, "run-a", later)
    assert events[0][0] == "points" and [p[0] for p in events[0][1]["points"]] == [1, 2, 3, 4, 5, 6]
    new = [p for name, d in events if name == "points" for p in d["points"] if p[0] == 7]
    assert new == [[7, 0.123]]
    assert events[-1] == ("done", {"status": "completed"})


def test_live_curve_reports_a_deleted_folder(client):
    run_dir = client.project["cfg"].runs_dir / "run-b"
    update_run(run_dir, status="running")
    events = _events(client, "run-b", lambda: shutil.rmtree(run_dir))
    assert events[-1][0] == "gone" and "deleted" in events[-1][1]["message"]


def test_dataset_page_escapes_rows_and_shows_card(shared_client):
    version = shared_client.project["version"]
    assert version in shared_client.get("/data").text
    page = shared_client.get(f"/data/{version}", params={"q": "script"}).text
    assert SCRIPT not in page and "&lt;script&gt;alert(&#39;row&#39;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp;amp; done" not in page and "&lt;b&gt;bold&lt;/b&gt; &amp; done" in page
    errors = page.split('id="row-errors"')[1].split("</ul>")[0]
    assert "tickets.jsonl:26" in errors  # the dropped row, with file:line
    dups = page.split('id="duplicates"')[1].split("</table>")[0]
    assert "tickets.jsonl:27</code>" in dups and "tickets.jsonl:1</code>" in dups and "exact" in dups
    assert 'id="leakage"' in page and 'id="pii"' in page
    emails = shared_client.get(f"/data/{version}", params={"origin": "emails", "split": "train"}).text
    assert "emails" in emails and ">tickets<" not in emails.split('id="rows"')[1]
    assert shared_client.get("/data/not-a-version").status_code == 404


def test_retrieval_as_two_tenants(shared_client):
    index = str(shared_client.project["cfg"].rag.index_dir)
    page = shared_client.get("/retrieval", params={"q": "refunds", "index": index, "mode": "hybrid", "t1": "acme",
                                            "t2": "globex"}).text
    acme, globex = page.split('class="caller"')[1:3]
    assert "Acme refunds are paid" in acme and "Globex refunds" not in acme
    assert "Globex refunds take 30 days" in globex and "Acme refunds" not in globex
    assert "record:globex-refunds" in acme and "tenant globex is not acme" in acme  # withheld, with why
    assert "needs group hr" in acme and "Acme payroll" not in acme  # no text of what is withheld
    hr = shared_client.get("/retrieval", params={"q": "refunds", "index": index, "t1": "acme", "g1": "hr"}).text
    assert "Acme payroll runs" in hr
    assert shared_client.get("/retrieval", params={"q": "x", "index": "/etc"}).status_code == 400


def test_bind_beyond_loopback_needs_an_admin_key(project):
    from fastapi.testclient import TestClient

    from llmtailor.ui.app import create_app

    with pytest.raises(TailorError, match="admin key"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "k" * 20)
    key = "secret-key-for-tests-1234"
    with TestClient(create_app(project["config"], admin_key=key)) as c:
        assert c.get("/").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong-key-wrong-key"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/login", params={"key": "nope"}).status_code == 401
        c.get("/login", params={"key": key})
        assert c.get("/").status_code == 200  # the HttpOnly cookie now carries the key


def test_running_run_shows_tokens_per_second_so_far(client):
    run_dir = client.project["cfg"].runs_dir / "run-a"
    update_run(run_dir, status="running")
    for step, (t, tokens) in enumerate([(1000.0, 500), (1002.0, 1500), (1004.0, 2500)], start=7):
        append_jsonl(run_dir / "metrics.jsonl", {"step": step, "loss": 0.5, "num_tokens": tokens, "time": t})
    rows = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert rows["run-a"]["cells"]["tokens_per_s"] == "500"  # (2500 - 500) tokens / 4 s
