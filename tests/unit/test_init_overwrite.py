"""`tailor init DIR` never overwrites a file it would write (tailor.yaml, data/tickets.jsonl, ticket.schema.json)
unless --force: it names the file, exits non-zero and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmtailor.cli.main import app
from llmtailor.errors import TailorError

FILES = ("tailor.yaml", "data/tickets.jsonl", "ticket.schema.json")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_writes_the_demo_project_into_an_empty_folder(tmp_path):
    r = CliRunner().invoke(app, ["init", str(tmp_path / "proj")])
    assert r.exit_code == 0, r.output
    assert sorted(snapshot(tmp_path / "proj")) == sorted(FILES)


@pytest.mark.parametrize("existing", FILES)
def test_init_refuses_to_overwrite_any_file_it_would_write(tmp_path, existing):
    proj = tmp_path / "proj"
    (proj / existing).parent.mkdir(parents=True, exist_ok=True)
    (proj / existing).write_text("my own work\n")
    before = snapshot(proj)
    r = CliRunner().invoke(app, ["init", str(proj)])
    assert r.exit_code != 0
    assert isinstance(r.exception, TailorError)
    assert str(proj / existing) in str(r.exception) and "--force" in str(r.exception)
    assert snapshot(proj) == before  # nothing written, not even the files that did not exist
    assert not [p for p in proj.rglob(".*.tmp")]


def test_init_names_every_existing_file_and_force_overwrites_them(tmp_path):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "tickets.jsonl").write_text("mine\n")
    (proj / "ticket.schema.json").write_text("{}\n")
    (proj / "notes.txt").write_text("untouched\n")
    r = CliRunner().invoke(app, ["init", str(proj)])
    msg = str(r.exception)
    assert r.exit_code != 0 and str(proj / "data" / "tickets.jsonl") in msg and str(proj / "ticket.schema.json") in msg
    assert not (proj / "tailor.yaml").exists()
    r = CliRunner().invoke(app, ["init", str(proj), "--force"])
    assert r.exit_code == 0, r.output
    assert (proj / "data" / "tickets.jsonl").read_text() != "mine\n"
    assert (proj / "notes.txt").read_text() == "untouched\n"
    assert sorted(snapshot(proj)) == sorted([*FILES, "notes.txt"])


def test_tailor_init_over_an_existing_dataset_exits_1_with_one_clear_line(tmp_path):
    """The real console script: message on the terminal, exit status 1, the user's data intact."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "tickets.jsonl").write_text('{"mine": true}\n')
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    p = subprocess.run([sys.executable, "-c", "from llmtailor.cli.main import main; main()", "init", str(proj)],
                       capture_output=True, text=True, env=env, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "error:" in out and "tickets.jsonl" in out and "already exists" in out
    assert (proj / "data" / "tickets.jsonl").read_text() == '{"mine": true}\n'
    assert not (proj / "tailor.yaml").exists()
