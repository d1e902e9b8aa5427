"""`tailor init --template`: every template writes a project whose config validates and whose data prepares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmtailor.cli.main import app
from llmtailor.cli.project import TEMPLATES
from llmtailor.config import load_config


def init(tmp_path: Path, template: str) -> Path:
    proj = tmp_path / template
    r = CliRunner().invoke(app, ["init", str(proj), "--template", template, "--json"])
    assert r.exit_code == 0, r.output
    written = json.loads(r.stdout)["files"]
    assert sorted(written) == sorted(str(proj / dst) for dst in TEMPLATES[template].values())
    return proj


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_template_writes_a_valid_project(tmp_path, template):
    proj = init(tmp_path, template)
    cfg = load_config(proj / "tailor.yaml")
    for src in cfg.data.sources:
        assert src.path.exists() and src.path.stat().st_size > 0
    if cfg.eval.json_schema:
        assert cfg.eval.json_schema.exists()
    if template == "distill":
        assert cfg.distill is not None and cfg.synth is not None and cfg.distill.teacher.run == "latest"
    if template == "chat-rag":
        assert cfg.rag is not None and len(list((proj / "docs").glob("*.md"))) == 5


def test_template_rows_answer_their_task(tmp_path):
    extract = init(tmp_path, "extract")
    schema = json.loads((extract / "extract.schema.json").read_text())
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    for line in (extract / "data" / "tickets.jsonl").read_text().splitlines():
        row = json.loads(line)
        answer = json.loads(row["messages"][-1]["content"])
        assert not list(validator.iter_errors(answer))
        for value in answer.values():  # every extracted value is in the ticket
            assert value is None or value in row["messages"][0]["content"]
    classify = init(tmp_path, "classify")
    labels = {json.loads(x)["messages"][-1]["content"] for x in (classify / "data" / "tickets.jsonl").read_text()
              .splitlines()}
    assert labels == set(load_config(classify / "tailor.yaml").eval.labels)


def test_unknown_template_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["init", str(tmp_path / "p"), "--template", "sentiment"])
    assert r.exit_code != 0 and "unknown template 'sentiment'" in r.output
    assert not (tmp_path / "p").exists()


@pytest.mark.integration
@pytest.mark.parametrize("template", ["extract", "chat-rag"])  # classify and distill reuse the demo tickets
def test_template_data_prepares_with_the_packaged_model(tmp_path, template):
    from llmtailor.pipeline import prepare_stage

    proj = init(tmp_path, template)
    version = prepare_stage(proj / "tailor.yaml", show_progress=False)
    card = version.card
    assert card["train_rows"] >= 50 and card["eval_rows"] >= 10 and card["leakage"]["count"] == 0
    text = (version.path / "train.jsonl").read_text()
    assert '"<PERSON>' not in text  # no JSON key or label mistaken for a name
