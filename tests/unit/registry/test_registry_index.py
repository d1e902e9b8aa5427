"""Finding 12: `tailor rag ingest` with a project config records each index version in the registry, and
`tailor registry ls / lineage` show it (name, path, version, document and chunk counts, embedder, history)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmtailor.cli.main import app

runner = CliRunner()


def _project(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "leave.md").write_text("# Leave\n\nStaff get 25 days of paid leave a year.\n")
    (tmp_path / "docs" / "travel.md").write_text("# Travel\n\nHotels up to 150 EUR per night are refunded.\n")
    cfg = tmp_path / "tailor.yaml"
    cfg.write_text(f"project: acme\nruns_dir: {tmp_path / 'runs'}\nregistry:\n  url: sqlite:///{tmp_path / 'reg.db'}\n"
                   "rag:\n  index_dir: indexes/handbook\n  embedding:\n    model: hashing\n")
    return cfg


def _json(args: list[str]) -> dict:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip().startswith("{") else json.loads(r.stdout)


def test_ingest_records_each_index_version_with_history(tmp_path):
    cfg = _project(tmp_path)
    c = ["-c", str(cfg)]
    first = _json(["rag", "ingest", str(tmp_path / "docs"), "--json", *c])
    items = _json(["registry", "ls", "--kind", "index", "--json", *c])["items"]
    assert len(items) == 1
    row = items[0]
    assert row["id"].startswith("ix-") and row["path"] == str(tmp_path / "indexes" / "handbook")
    assert row["fingerprint"] == first["version"]
    info = row["info"]
    assert info["name"] == "handbook" and info["version"] == first["version"]
    assert info["documents"] == 2 and info["chunks"] == first["chunks_total"] > 0
    assert info["embedding"]["model"] == "hashing" and info["content_hash"] == first["content_hash"]
    # Unchanged corpus: same version, no new row.
    _json(["rag", "ingest", str(tmp_path / "docs"), "--json", *c])
    assert len(_json(["registry", "ls", "--kind", "index", "--json", *c])["items"]) == 1
    # A new document makes a new version; lineage of it lists both versions, oldest first.
    (tmp_path / "docs" / "it.md").write_text("# IT\n\nLaptops are replaced every four years.\n")
    second = _json(["rag", "ingest", str(tmp_path / "docs"), "--json", *c])
    items = _json(["registry", "ls", "--kind", "index", "--json", *c])["items"]
    assert [i["fingerprint"] for i in items] == [first["version"], second["version"]]
    assert items[1]["info"]["documents"] == 3
    chain = _json(["registry", "lineage", items[1]["id"], "--json", *c])["lineage"]
    assert [x["kind"] for x in chain] == ["index", "index"]
    assert [x["id"] for x in chain] == [items[0]["id"], items[1]["id"]]
    assert "3 documents" in chain[1]["summary"] and "hashing" in chain[1]["summary"]
    shown = runner.invoke(app, ["registry", "ls", *c])
    assert shown.exit_code == 0 and items[1]["id"] in shown.output


def test_ingest_without_project_config_touches_no_registry(tmp_path, monkeypatch):
    _project(tmp_path)
    (tmp_path / "tailor.yaml").unlink()
    monkeypatch.chdir(tmp_path)
    _json(["rag", "ingest", str(tmp_path / "docs"), "--index", str(tmp_path / "ix"), "--embedding", "hashing",
           "--json"])
    assert not (tmp_path / "reg.db").exists() and not (tmp_path / "registry.db").exists()
