"""SIGKILL `tailor rag ingest` of many small files after a few batch commits; the rerun finishes the job.

Each batch of files is one LanceDB commit, so the table must open at a committed version, the rerun must index
every file exactly once (no chunk of a file twice, none missing) and the index must answer a query.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import lancedb
from typer.testing import CliRunner

from llmtailor.cli.main import app
from tests.faults.conftest import cli, kill_when, run_cli

FILES = 120
WORDS = ["alpha", "bravo", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper"]


def _word(i: int) -> str:
    """A made-up token unique to document i (so a query for it has one right answer)."""
    return "zq" + "".join(WORDS[int(d)][:3] for d in f"{i:03d}")


def _manifests(index: Path) -> int:
    return len(list(index.rglob("*.lance/_versions/*.manifest")))


def _table(index: Path):
    (lance_dir,) = {p.parent.parent for p in index.rglob("*.lance/_versions")}
    db = lancedb.connect(str(lance_dir))
    return db.open_table(db.list_tables().tables[0])


def test_kill_mid_ingest_then_rerun_indexes_every_file_once(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(FILES):
        body = "\n\n".join(f"Paragraph {p} of note {i} mentions {_word(i)} and the {WORDS[(i + p) % 10]} budget."
                           for p in range(3))
        (docs / f"note-{i:03d}.md").write_text(f"# Note {i}\n\n{body}\n", encoding="utf-8")
    (tmp_path / "tailor.yaml").write_text(
        f"project: fault\nregistry:\n  url: sqlite:///{tmp_path / 'reg.db'}\n"
        "rag:\n  index_dir: idx\n  embedding:\n    model: hashing\n  ingest:\n    batch_files: 4\n")
    index = tmp_path / "idx"

    proc = cli("rag", "ingest", str(docs), cwd=tmp_path)
    kill_when(proc, lambda: _manifests(index) >= 4)  # table created and a few batches committed

    partial = _table(index).to_arrow().to_pydict()  # opens at its last committed version, every row readable
    assert 0 < len(set(partial["source"])) < FILES  # killed mid-work, not before or after
    assert not (index / "index.json").exists() or json.loads((index / "index.json").read_text())

    res = run_cli("rag", "ingest", str(docs), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["files_seen"] == FILES and report["skipped"] == []
    assert report["files_unchanged"] == len(set(partial["source"]))  # what was committed is kept, not redone

    rows = _table(index).to_arrow().to_pydict()
    by_source: dict[str, list[int]] = defaultdict(list)
    for src, n in zip(rows["source"], rows["chunk_index"], strict=True):
        by_source[src].append(n)
    assert len(by_source) == FILES
    assert len(set(rows["id"])) == len(rows["id"]) == report["chunks_total"]
    for src, idx in by_source.items():
        assert sorted(idx) == list(range(len(idx))), src  # each chunk of each file exactly once

    runner, c = CliRunner(), ["-c", str(tmp_path / "tailor.yaml")]
    for i in (0, 77, FILES - 1):
        q = runner.invoke(app, ["rag", "query", _word(i), "--top-k", "1", "--mode", "sparse", "--json", *c])
        assert q.exit_code == 0, q.output
        assert json.loads(q.stdout.strip().splitlines()[-1])["results"][0]["source"].endswith(f"note-{i:03d}.md")
    ls = runner.invoke(app, ["registry", "ls", "--kind", "index", "--json", *c])
    assert [r["info"]["documents"] for r in json.loads(ls.stdout)["items"]] == [FILES]
