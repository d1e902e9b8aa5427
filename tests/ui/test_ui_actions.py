"""State-changing actions: CSRF, promotion gates, concurrent promotions, config edits, jobs, playground feedback."""

from __future__ import annotations

import json
import threading
import time

import pytest

from llmtailor.registry.db import Registry
from llmtailor.ui import audit
from llmtailor.ui.routes_registry import stage_head


def post(client, url, **data):
    return client.post(url, data={"csrf": client.csrf, **data}, follow_redirects=False)


def head(client, stage="production"):
    return stage_head(client.wb.registry, stage)


@pytest.mark.parametrize("token", [None, "wrong"])
def test_post_without_the_csrf_token_is_refused_and_does_nothing(shared_client, token):
    data = {"adapter": "ad-run-a", "stage": "production"} | ({"csrf": token} if token else {})
    r = shared_client.post("/registry/promote", data=data, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    assert head(shared_client) is None
    token_field = {"csrf": token} if token else {}
    assert shared_client.post("/work/start", data={"kind": "train"} | token_field).status_code == 403
    assert shared_client.wb.jobs.list() == []
    r = shared_client.post("/api/feedback", json={"id": "x", "rating": "up"}, headers={"X-CSRF-Token": token or ""})
    assert r.status_code == 403
    assert shared_client.post("/registry/rollback", data={"stage": "production"}).status_code == 403


def test_failed_gates_block_promotion_unless_forced_with_who_and_why(client):
    r = post(client, "/registry/promote", adapter="ad-run-b", stage="production", mode="promote")
    assert r.status_code == 409 and "failed its evaluation gates" in r.text and "tick Force" in r.text
    assert head(client) is None
    r = post(client, "/registry/promote", adapter="ad-run-b", stage="production", force="1", who="alice")
    assert r.status_code == 400 and "who forces it and why" in r.text and head(client) is None
    r = post(client, "/registry/promote", adapter="ad-run-b", stage="production", force="1", who="alice",
             why="hotfix for <ticket 7>")
    assert r.status_code == 303
    h = head(client)
    assert h["adapter_id"] == "ad-run-b" and h["forced"] and h["note"] == "forced by alice: hotfix for <ticket 7>"
    log = audit.entries(client.wb.registry)
    assert [e["outcome"] for e in log[:3]] == ["ok", "refused", "refused"]
    assert log[0]["detail"]["who"] == "alice" and log[0]["detail"]["why"] == "hotfix for <ticket 7>"
    assert log[0]["actor"].endswith("@testclient")
    page = client.get("/registry").text
    assert "hotfix for &lt;ticket 7&gt;" in page and "hotfix for <ticket" not in page


def test_promote_canary_shadow_and_rollback_go_through_the_registry(client):
    assert post(client, "/registry/promote", adapter="ad-run-a", stage="production").status_code == 303
    r = post(client, "/registry/promote", adapter="ad-run-b", stage="production", mode="canary", percent="25")
    assert r.status_code == 409  # a canary is gated too
    r = post(client, "/registry/promote", adapter="ad-run-b", stage="production", mode="canary", percent="25",
             force="1", who="bob", why="try it")
    assert r.status_code == 303 and head(client)["canary_percent"] == 25.0
    assert post(client, "/registry/rollback", stage="production").status_code == 303
    h = head(client)
    assert h["action"] == "rollback" and h["adapter_id"] == "ad-run-a" and h["canary_adapter_id"] is None
    r = post(client, "/registry/promote", adapter="ad-run-a", stage="staging", mode="shadow")
    assert r.status_code == 400 and "no staging deployment to shadow" in r.text
    r = post(client, "/registry/promote", adapter="ad-run-a", stage="production", mode="canary", percent="abc")
    assert r.status_code == 400 and "percent" in r.text
    with Registry(client.wb.registry.url) as reg:  # what `tailor registry` sees
        assert [d["action"] for d in reg.list("deployment")] == ["promote", "canary", "rollback"]


def test_two_browsers_promoting_at_once_one_wins_the_other_sees_why(client):
    page = client.get("/registry").text
    assert 'name="expected_production" value="none"' in page  # both browsers loaded the page now
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def promote(adapter: str) -> None:
        barrier.wait()
        results[adapter] = post(client, "/registry/promote", adapter=adapter, stage="production",
                                expected_production="none", force="1", who="carol", why="race")

    threads = [threading.Thread(target=promote, args=(a,)) for a in ("ad-run-a", "ad-run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results.values())
    assert codes == [303, 409]
    loser = next(r for r in results.values() if r.status_code == 409)
    winner = head(client)
    assert "changed since your page was loaded" in loser.text and winner["id"] in loser.text
    with Registry(client.wb.registry.url) as reg:
        assert len(reg.list("deployment")) == 1
    r = post(client, "/registry/rollback", stage="production", expected="none")
    assert r.status_code == 409 and "changed since" in r.text


def test_invalid_config_edit_marks_the_field_and_writes_nothing(client):
    path = client.project["config"]
    before = path.read_bytes()
    bad = before.decode().replace("learning_rate: 0.005", "learning_rate: -1").replace("lora_r: 4", "lora_rr: 4")
    r = post(client, "/work/config", text=bad, action="save")
    assert r.status_code == 400
    assert 'data-field="train.learning_rate"' in r.text and "greater than 0" in r.text
    assert "did you mean &#39;lora_r&#39;" in r.text
    assert path.read_bytes() == before
    r = post(client, "/work/config", text="model: [unclosed", action="save")
    assert r.status_code == 400 and "invalid YAML" in r.text and path.read_bytes() == before
    good = before.decode().replace("learning_rate: 0.005", "learning_rate: 0.004")
    assert post(client, "/work/config", text=good, action="validate").status_code == 200
    assert path.read_bytes() == before  # validate only
    r = post(client, "/work/config", text=good, action="save")
    assert r.status_code == 200 and "Saved." in r.text and path.read_text() == good


def test_start_form_marks_bad_fields_and_starts_nothing(shared_client):
    r = post(shared_client, "/work/start", kind="train", max_steps="ten")
    assert r.status_code == 400 and 'data-field="max_steps"' in r.text and "whole number" in r.text
    r = post(shared_client, "/work/start", kind="eval", run="no-such-run")
    assert r.status_code == 400 and 'data-field="run"' in r.text
    r = post(shared_client, "/work/start", kind="deploy")
    assert r.status_code == 400 and 'data-field="kind"' in r.text
    assert shared_client.wb.jobs.list() == []


def test_training_started_twice_is_refused_and_stop_marks_the_job(client):
    r = post(client, "/work/start", kind="train", max_steps="5")
    assert r.status_code == 303
    (job,) = client.wb.jobs.list()
    try:
        r = post(client, "/work/start", kind="run")
        assert r.status_code == 409 and "already running" in r.text and job.id in r.text
        assert len(client.wb.jobs.list()) == 1
        assert post(client, "/work/stop", job=job.id).status_code == 303
        job.proc.wait(timeout=60)
        assert job.proc.returncode != 0 and job.stopped_by
        r = post(client, "/work/stop", job=job.id)
        assert r.status_code == 409 and "already finished" in r.text
    finally:
        if job.running:
            job.proc.kill()
    actions = [(e["action"], e["outcome"]) for e in audit.entries(client.wb.registry)]
    assert ("start-train", "ok") in actions and ("start-run", "refused") in actions and ("stop", "ok") in actions


def test_resume_refuses_a_completed_run(shared_client):
    r = post(shared_client, "/work/resume", run="run-a")
    assert r.status_code == 409 and "already completed" in r.text
    assert post(shared_client, "/work/resume", run="ghost").status_code == 404


def _stream(client, body):
    with client.stream("POST", "/api/play", json=body, headers={"X-CSRF-Token": client.csrf}) as r:
        assert r.status_code == 200, r.read()
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    return chunks


def test_playground_streams_variants_and_feedback_lands_in_the_registry(client):
    chunks = _stream(client, {"model": "tiny", "prompt": "hello <b>", "max_tokens": 4})
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert len(deltas) >= 2 and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    rid = chunks[0]["id"]
    rag = _stream(client, {"model": "support-bot", "prompt": "how long do refunds take?", "max_tokens": 4})
    final = [c for c in rag if c.get("choices") and c["choices"][0]["finish_reason"]][-1]
    assert {p["source"] for p in final["passages"]} == {"record:acme-refunds"}  # as tenant acme (the default)
    globex = _stream(client, {"model": "support-bot", "prompt": "how long do refunds take?", "max_tokens": 4,
                              "tenant": "globex"})
    final_g = [c for c in globex if c.get("choices") and c["choices"][0]["finish_reason"]][-1]
    assert {p["source"] for p in final_g["passages"]} == {"record:globex-refunds"}
    chunk = final["passages"][0]["chunk_id"]
    text = client.get("/api/passage", params={"model": "support-bot", "id": chunk}).json()["text"]
    assert text.startswith("Acme refunds are paid")
    assert client.get("/api/passage", params={"model": "tiny", "id": chunk}).status_code == 404
    assert client.get("/api/passage", params={"model": "support-bot", "id": "nope'--"}).status_code == 404
    keys = [e for e in audit.entries(client.wb.registry) if e["action"] == "playground-key"]
    assert sorted(e["detail"]["tenant"] for e in keys) == ["acme", "globex"]
    r = client.post("/api/feedback", json={"id": rid, "rating": "up"}, headers={"X-CSRF-Token": client.csrf})
    assert r.status_code == 200, r.text
    fb = client.wb.registry.feedback()
    assert [(f["request_id"], f["rating"]) for f in fb] == [(rid, "up")]
    r = client.post("/api/feedback", json={"id": "req_unknown", "rating": "down"},
                    headers={"X-CSRF-Token": client.csrf})
    assert r.status_code == 404
    r = client.post("/api/play", json={"model": "gpt-5", "prompt": "x"}, headers={"X-CSRF-Token": client.csrf})
    assert r.status_code == 400 and "not one of" in r.json()["error"]
    r = client.post("/api/play", json={"model": "tiny", "prompt": "x", "json_schema": "{not json"},
                    headers={"X-CSRF-Token": client.csrf})
    assert r.status_code == 400 and "json_schema" in r.json()["error"]


def test_playground_json_schema_toggle_constrains_the_answer(client):
    pytest.importorskip("xgrammar")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    t0 = time.time()
    chunks = _stream(client, {"model": "tiny", "prompt": "give json", "max_tokens": 24,
                              "json_schema": json.dumps(schema)})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    errors = [c for c in chunks if "error" in c]
    assert not errors, errors
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1]
    if finish == "stop":
        assert isinstance(json.loads(text)["a"], int)
    else:  # cut at max_tokens: still a prefix of a schema-valid document
        assert text.startswith("{")
    assert time.time() - t0 < 120


def test_resume_starts_train_resume_on_an_interrupted_run(client):
    from llmtailor.runs import update_run

    update_run(client.project["cfg"].runs_dir / "run-b", status="interrupted")
    assert "Resume this run" in client.get("/runs/run-b").text
    r = post(client, "/work/resume", run="run-b")
    assert r.status_code == 303
    (job,) = client.wb.jobs.list()
    try:
        assert job.argv[3:] == ["train", "-c", str(client.project["config"]), "--resume", "--run", "run-b"]
    finally:
        client.wb.jobs.stop(job.id, "test")
        job.proc.wait(timeout=60)
