"""SIGKILL `tailor data prepare` while it writes a dataset version: a version folder is either complete or absent
(never half-written), the rerun publishes the same content-addressed hash and clears the dead run's temporary
folder, and a third run reuses the version."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from llmtailor.cli.main import app
from llmtailor.io import write_jsonl
from tests.faults.conftest import cli, kill_when

FILES = ("train.jsonl", "eval.jsonl", "card.json", "card.md")


def _tmp_dirs(out: Path) -> list[Path]:
    return list(out.glob(".tmp-*")) if out.exists() else []


def test_kill_while_writing_a_version_leaves_none_or_a_complete_one(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": f"question {i}: " + "lorem ipsum " * (i % 9)},
                          {"role": "assistant", "content": f"answer {i} " + "dolor " * 30}]} for i in range(1200)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    (tmp_path / "tailor.yaml").write_text(
        f"project: fault\nregistry:\n  enabled: false\nmodel:\n  base_model: {tiny_model_dir}\n"
        "data:\n  sources: [rows.jsonl]\n  output_dir: datasets\n  max_seq_len: 1024\n"
        "  pii:\n    enabled: false\n  dedup:\n    enabled: false\n")
    out = tmp_path / "datasets"

    proc = cli("data", "prepare", "--json", cwd=tmp_path)
    kill_when(proc, lambda: bool(_tmp_dirs(out)), poll=0.002)  # the version's folder is being written
    (tmp,) = _tmp_dirs(out)
    hash_ = tmp.name.split("-")[1]
    published = [d for d in out.iterdir() if not d.name.startswith(".")]
    assert published == [] or all((out / hash_ / f).is_file() for f in FILES)  # none, or complete

    res = CliRunner().invoke(app, ["data", "prepare", "--json", "-c", str(tmp_path / "tailor.yaml")])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["hash"] == hash_ and Path(got["path"]) == out / hash_
    assert all((out / hash_ / f).is_file() for f in FILES)
    card = json.loads((out / hash_ / "card.json").read_text())
    lines = sum(1 for _ in (out / hash_ / "train.jsonl").open()) + sum(1 for _ in (out / hash_ / "eval.jsonl").open())
    assert card["rows_kept"] == lines == len(rows)
    assert _tmp_dirs(out) == []  # the killed run's leftovers are cleared
    again = CliRunner().invoke(app, ["data", "prepare", "--json", "-c", str(tmp_path / "tailor.yaml")])
    assert again.exit_code == 0, again.output
    again_json = json.loads(again.stdout.strip().splitlines()[-1])
    assert again_json["hash"] == hash_ and again_json["reused"] is True


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from llmtailor.data.versions import remove_dead_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".tmp-abc-{int(dead.stdout)}-x1"
    mine = tmp_path / f".tmp-abc-{os.getpid()}-x2"
    alive_parent = tmp_path / f".tmp-abc-{os.getppid()}-x3"
    old_style = tmp_path / ".tmp-abc-x4"
    for d in (gone, mine, alive_parent, old_style):
        d.mkdir()
        (d / "train.jsonl").write_text("{}\n")
    assert remove_dead_temporaries(tmp_path) == [gone]
    assert not gone.exists() and mine.exists() and alive_parent.exists() and old_style.exists()
