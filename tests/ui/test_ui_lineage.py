"""The lineage graph follows adapter chains: DPO on an SFT adapter, a merge of two adapters, an export, an index and
the serving alias that joins them; and the runs table's JSON feed for its live refresh."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from llmtailor.io import append_jsonl
from llmtailor.registry.db import Registry
from llmtailor.registry.hooks import record_index, sync_run
from llmtailor.runs import update_run
from tests.ui.conftest import make_run, open_client


def add_adapter_chain(project: dict[str, Any]) -> dict[str, str]:
    """run-dpo starts from run-a's adapter (train.init_adapter); run-merged merges run-dpo, run-b and a bare
    adapter folder; run-dpo is exported to GGUF; the RAG index is registered. Written as the CLI writes them."""
    cfg = project["cfg"]
    runs = cfg.runs_dir
    dpo = make_run(runs, "run-dpo", 13, passed=True, lr=0.01, answers=["x"])
    update_run(dpo, objective="dpo", parents=["run-a"], init_adapter=str(runs / "run-a" / "adapter"))
    merged = make_run(runs, "run-merged", 14, passed=True, lr=0.01, answers=["y"])
    update_run(merged, objective="merge", parents=["run-dpo", "run-b", "/elsewhere/<b>loose</b>"],
               merge={"method": "ties", "weights": [0.5, 0.3, 0.2]})
    reg = Registry(cfg.registry.url)
    try:
        for run in (dpo, merged):
            sync_run(reg, run)
        export = reg.record_export("run-dpo", project["root"] / "exports" / "dpo.gguf", "gguf", "q8_0", {})
    finally:
        reg.close()
    index = record_index(cfg, cfg.rag.index_dir)
    assert index is not None
    return {"export": export, "index": index}


@pytest.fixture(scope="module")
def chain_client(tmp_path_factory, tiny_model_dir):
    from tests.ui.conftest import build_project

    project = build_project(tmp_path_factory.mktemp("ui-lineage"), tiny_model_dir)
    ids = add_adapter_chain(project)
    with open_client(project) as c:
        c.ids = ids
        yield c


def _edges(graph: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e["from"], e["to"], e["label"]) for e in graph["edges"]}


def test_lineage_of_a_dpo_adapter_shows_its_sft_parent_and_what_was_made_from_it(chain_client):
    graph = chain_client.get("/api/lineage", params={"item": "ad-run-dpo"}).json()
    rel = {n["id"]: n["relation"] for n in graph["nodes"]}
    assert rel["ad-run-dpo"] == "self"
    assert {rel["ad-run-a"], rel["run-a"], rel["run-dpo"]} == {"ancestor"}
    export = chain_client.ids["export"]
    assert rel[export] == rel["run-merged"] == rel["ad-run-merged"] == "descendant"
    assert "ad-run-b" not in rel  # the merge's other parent is neither an ancestor nor a descendant
    edges = _edges(graph)
    assert ("ad-run-a", "run-dpo", "init_adapter of dpo") in edges
    assert ("run-dpo", "ad-run-dpo", "produced") in edges
    assert ("ad-run-dpo", "run-merged", "merged into") in edges
    assert ("ad-run-dpo", export, "exported as gguf") in edges
    # columns: every edge points rightwards
    layer = {n["id"]: n["layer"] for n in graph["nodes"]}
    assert all(layer[e["from"]] < layer[e["to"]] for e in graph["edges"])


def test_lineage_of_a_merge_shows_every_parent(chain_client):
    graph = chain_client.get("/api/lineage", params={"item": "ad-run-merged"}).json()
    edges = _edges(graph)
    for parent in ("ad-run-dpo", "ad-run-b", "folder:/elsewhere/<b>loose</b>"):
        assert (parent, "run-merged", "merged into") in edges
    assert ("ad-run-a", "run-dpo", "init_adapter of dpo") in edges  # the grandparent, through the DPO run
    assert {n["id"] for n in graph["nodes"] if n["kind"] == "evaluation"}  # its own evaluation, downstream


def test_lineage_joins_index_adapter_and_rag_alias(chain_client):
    index = chain_client.ids["index"]
    graph = chain_client.get("/api/lineage", params={"item": index}).json()
    assert (index, "alias:support-bot", "retrieved by") in _edges(graph)
    assert "ad-run-a" not in {n["id"] for n in graph["nodes"]}  # the alias's other parent: not the index's kin
    graph = chain_client.get("/api/lineage", params={"item": "alias:support-bot"}).json()
    assert {(index, "alias:support-bot", "retrieved by"), ("ad-run-a", "alias:support-bot", "answers for")} <= \
        _edges(graph)
    graph = chain_client.get("/api/lineage", params={"item": "ad-run-a"}).json()
    rel = {n["id"]: n["relation"] for n in graph["nodes"]}
    assert rel["alias:support-bot"] == rel["run-merged"] == rel["ad-run-dpo"] == "descendant"


def test_lineage_page_draws_and_lists_every_edge_escaped(chain_client):
    page = chain_client.get("/lineage", params={"item": "ad-run-merged"}).text
    edges = page.split('id="lineage-edges"')[1].split("</table>")[0]
    assert edges.count("<tr data-from") == len(chain_client.get("/api/lineage",
                                                                params={"item": "ad-run-merged"}).json()["edges"])
    svg = page.split('id="lineage-svg"')[1].split("</svg>")[0]
    assert svg.count('class="edge"') >= 6 and 'data-id="ad-run-merged"' in svg and "rel-self" in svg
    assert "<b>loose</b>" not in page and "&lt;b&gt;loose&lt;/b&gt;" in page
    registry = chain_client.get("/registry").text
    assert 'href="/lineage?item=ad-run-dpo"' in registry


def test_lineage_of_an_unknown_item_is_a_404_naming_it(chain_client):
    r = chain_client.get("/api/lineage", params={"item": "ad-nope"})
    assert r.status_code == 404 and "'ad-nope' is not in the registry" in r.json()["error"]
    r = chain_client.get("/lineage", params={"item": "<script>x</script>"})
    assert r.status_code == 404 and "<script>x" not in r.text


def test_runs_feed_shows_a_running_run_live_and_drops_a_deleted_one(client):
    runs = client.project["cfg"].runs_dir
    before = {r["id"] for r in client.get("/api/runs").json()["runs"]}
    live = runs / "run-live"
    update_run(live, run_id="run-live", status="running", method="lora", created="2026-12-01T09:00:00")
    append_jsonl(live / "metrics.jsonl", {"step": 3, "loss": 1.25})
    feed = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(feed) == before | {"run-live"}
    row = feed["run-live"]
    assert row["status"] == "running" and row["steps"] == 3 and row["cells"]["final_loss"] == "1.2500"
    append_jsonl(live / "metrics.jsonl", {"step": 4, "loss": 1.0})
    assert client.get("/api/runs").json()["runs"][0]["cells"]["steps"] == "4"
    update_run(live, status="completed", steps=4, final_loss=0.9, train_tokens_per_s=321.0)
    row = client.get("/api/runs").json()["runs"][0]
    assert (row["status"], row["cells"]["tokens_per_s"], row["cells"]["final_loss"]) == ("completed", "321", "0.9000")
    shutil.rmtree(live)
    assert "run-live" not in {r["id"] for r in client.get("/api/runs").json()["runs"]}
    page = client.get("/").text
    assert 'id="runs-body" data-live="/api/runs"' in page and Path(runs).exists()
