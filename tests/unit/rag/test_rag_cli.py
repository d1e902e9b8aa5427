"""`tailor rag ...` and `tailor eval retrieval` through the CLI, with --json for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmtailor.cli.main import app
from llmtailor.errors import TailorError

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def out_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture()
def indexed(corpus, tmp_path):
    idx = tmp_path / "idx"
    res = run("rag", "ingest", str(corpus), "--index", str(idx), "--embedding", "hashing", "--tenant", "acme",
              "--json")
    assert res.exit_code == 0, res.output
    return idx


def test_ingest_query_status_json(indexed, corpus):
    res = run("rag", "query", "hotel rooms per night", "--index", str(indexed), "--tenant", "acme", "--top-k", "2",
              "--json")
    assert res.exit_code == 0, res.output
    data = out_json(res)
    assert data["mode"] == "hybrid" and len(data["results"]) == 2
    assert data["results"][0]["source"].endswith("travel.docx")
    res = run("rag", "query", "hotel", "--index", str(indexed), "--tenant", "acme", "--mode", "sparse",
              "--where", "file_type = 'docx'", "--json")
    assert {r["source"].rsplit("/", 1)[-1] for r in out_json(res)["results"]} == {"travel.docx"}
    res = run("rag", "query", "hotel", "--index", str(indexed), "--tenant", "globex", "--json")
    assert out_json(res)["results"] == []
    status = out_json(run("rag", "status", "--index", str(indexed), "--json"))
    assert status["sources"] == 5 and status["embedding"]["model"] == "hashing"
    # Same metadata, no --embedding: the index keeps its own model and nothing is redone.
    again = run("rag", "ingest", str(corpus), "--index", str(indexed), "--tenant", "acme", "--json")
    assert again.exit_code == 0 and out_json(again)["files_unchanged"] == 5 and out_json(again)["embedded"] == 0


def test_ingest_exit_status_follows_skips(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.md").write_text("# OK\n\nfine\n", encoding="utf-8")
    (d / "bad.txt").write_bytes(b"\x00\x01\x02\x03")
    res = run("rag", "ingest", str(d), "--index", str(tmp_path / "i"), "--embedding", "hashing", "--json")
    assert res.exit_code == 1
    data = out_json(res)
    assert data["files_new"] == 1 and data["skipped"][0]["file"].endswith("bad.txt")
    assert "binary" in data["skipped"][0]["reason"]
    res = run("rag", "ingest", str(d), "--index", str(tmp_path / "i"), "--skip-errors", "--json")
    assert res.exit_code == 0
    res = run("rag", "ingest", str(d), "--index", str(tmp_path / "i"), "--skip-errors")  # human output
    assert res.exit_code == 0 and "bad.txt" in res.output and "binary" in res.output


def test_bad_options_are_clear(indexed, tmp_path):
    res = run("rag", "query", "x", "--index", str(tmp_path / "missing"))
    assert isinstance(res.exception, TailorError) and "index not found" in str(res.exception)
    res = run("rag", "query", "x", "--index", str(indexed), "--where", "tenant = 'globex' OR 1=1")
    assert isinstance(res.exception, TailorError)
    res = run("rag", "query", "x", "--index", str(indexed), "--access-level", "godmode")
    assert isinstance(res.exception, TailorError) and "unknown access level" in str(res.exception)
    res = run("rag", "ingest", str(tmp_path), "--index", str(tmp_path / "j"), "--date", "yesterday")
    assert isinstance(res.exception, TailorError) and "--date" in str(res.exception)


def test_missing_index_from_the_console_script(tmp_path):
    """The real entry point: one clear line on stderr, exit 1, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", "from llmtailor.cli.main import main; main()", "rag", "query", "refunds",
         "--index", str(tmp_path / "nowhere"), "--json"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[3],
    )
    assert proc.returncode == 1
    assert "index not found" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_eval_retrieval_on_own_questions(indexed, tmp_path):
    qs = tmp_path / "q.jsonl"
    qs.write_text(
        "\n".join(json.dumps(r) for r in [
            {"question": "How much can a hotel room cost?", "relevant": ["travel.docx"], "tenant": "acme"},
            {"question": "When are expense reports due?", "relevant": ["docs/handbook.pdf"], "tenant": "acme"},
            {"question": "refund for gift cards", "relevant": ["policy.md", "gone.md"], "tenant": "acme"},
        ]) + "\n",
        encoding="utf-8",
    )
    res = run("eval", "retrieval", "--index", str(indexed), "--questions", str(qs), "--json")
    assert res.exit_code == 0, res.output
    data = out_json(res)
    assert data["queries"] == 3 and data["unmatched_relevant"] == ["gone.md"]
    for mode in ("dense", "sparse", "hybrid"):
        m = data["modes"][mode]
        assert 0 < m["ndcg@10"] <= 1 and m["hit_rate@10"] == 1.0
        assert m["latency_ms"]["p95"] >= m["latency_ms"]["p50"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "relevant": []}\n', encoding="utf-8")
    res = run("eval", "retrieval", "--index", str(indexed), "--questions", str(bad))
    assert isinstance(res.exception, TailorError) and "bad.jsonl:1: relevant" in str(res.exception)


def test_eval_retrieval_on_a_beir_folder(tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = {"d1": "wing flutter at supersonic speed", "d2": "boundary layer heat transfer", "d3": "landing gear loads"}
    (beir / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": k, "title": "", "text": v})
                                                 for k, v in docs.items()) + "\n")
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": "heat transfer in boundary layers"}) + "\n"
                                        + json.dumps({"_id": "2", "text": "flutter of wings"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td2\t2\n2\td1\t1\n")
    res = run("eval", "retrieval", "--beir", str(beir), "--index", str(tmp_path / "bi"), "--embedding", "hashing",
              "--json")
    assert res.exit_code == 0, res.output
    data = out_json(res)
    assert data["documents"] == 3 and data["queries"] == 2
    assert data["modes"]["sparse"]["ndcg@10"] == 1.0 and data["modes"]["hybrid"]["mrr@10"] == 1.0
    res = run("eval", "retrieval", "--beir", str(tmp_path), "--index", str(tmp_path / "bi"))
    assert isinstance(res.exception, TailorError) and "corpus.jsonl: missing" in str(res.exception)
