"""tailor.yaml: unknown keys and wrong types point at the line, paths resolve against the file."""

import json
from pathlib import Path

import pytest

from llmtailor.config import json_schema, load_config
from llmtailor.errors import ConfigError, TailorError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tailor.yaml"
    p.write_text(text)
    return p


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  sources: [data/x.jsonl]\neval:\n  json_schema: s.json\n"))
    assert cfg.model.base_model == "smollm2-135m-instruct"
    assert cfg.data.sources[0].path == (tmp_path / "data/x.jsonl").resolve()
    assert cfg.eval.json_schema == (tmp_path / "s.json").resolve()
    assert cfg.runs_dir == (tmp_path / "runs").resolve()
    assert cfg.train.method == "lora"


def test_unknown_key_names_line_and_suggests(tmp_path):
    path = write(tmp_path, "model:\n  base_model: x\ntrain:\n  method: lora\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.line == 5
    assert e.value.field == "train.learnin_rate"
    assert "did you mean 'learning_rate'" in str(e.value)
    assert str(e.value).startswith(f"{path}:5: train.learnin_rate:")


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "trian:\n  epochs: 1\n"))
    assert e.value.line == 1 and "did you mean 'train'" in str(e.value)


def test_wrong_type_names_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  epochs: 1\n  batch_size: many\n"))
    assert e.value.line == 3 and e.value.field == "train.batch_size" and "'many'" in str(e.value)


def test_bad_enum_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  method: lorra\n"))
    assert e.value.line == 2 and "lora" in str(e.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  epochs: [1\n"))
    assert "invalid YAML" in str(e.value)
    with pytest.raises(TailorError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_schema_is_json_schema():
    schema = json_schema()
    json.dumps(schema)
    assert {"model", "data", "train", "eval", "report"} <= set(schema["properties"])


def test_shipped_demo_config_is_valid():
    from importlib import resources

    with resources.as_file(resources.files("llmtailor") / "assets" / "demo" / "tailor.yaml") as p:
        cfg = load_config(p)
    assert cfg.eval.json_schema.name == "ticket.schema.json"
