"""Evol-Instruct synthesis through a real local HTTP endpoint: kept rows, drops by reason, and nothing lost when the
endpoint dies, hangs or answers garbage mid-run (a rerun continues where it stopped)."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from llmtailor.config import load_config
from llmtailor.data.synth import run_synth
from llmtailor.errors import TailorError
from llmtailor.io import write_jsonl
from tests.unit.fake_openai import FakeOpenAI, given_prompt

UNIQUE = itertools.count()
SYSTEM = "Triage the ticket. Answer with one JSON object with keys category and priority."
SCHEMA = {"type": "object", "required": ["category", "priority"], "additionalProperties": False,
          "properties": {"category": {"enum": ["billing", "technical"]}, "priority": {"enum": ["low", "high"]}}}
TOPICS = ["invoice total is wrong", "card was charged twice", "login page times out", "password reset mail missing",
          "refund has not arrived", "API returns error 500", "cannot download the receipt", "two factor code fails",
          "VAT number missing on invoice", "dashboard is blank", "subscription renewed early", "upload stalls at 90"]


def human_rows() -> list[dict]:
    out = []
    for i, topic in enumerate(TOPICS):
        cat = "billing" if i % 2 == 0 else "technical"
        out.append({"id": f"h{i}", "messages": [
            {"role": "user", "content": f"Ticket {i}: {topic}. Customer account number {1000 + i}."},
            {"role": "assistant", "content": json.dumps({"category": cat, "priority": ["low", "high"][i % 3 == 0]})},
        ]})
    return out


def project(tmp_path: Path, model_dir: Path, base_url: str, **synth) -> Path:
    write_jsonl(tmp_path / "data" / "tickets.jsonl", human_rows())
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    cfg = {
        "model": {"base_model": str(model_dir), "device": "cpu"},
        "data": {"sources": [{"path": "data/tickets.jsonl"}], "system_prompt": SYSTEM, "max_seq_len": 1024,
                 "pii": {"enabled": False}, "split": {"eval_fraction": 0.25}},
        "eval": {"json_schema": "schema.json"},
        "synth": {"generator": {"base_url": base_url, "timeout_s": 2, "retries": 0}, "n_per_seed": 2,
                  "ops": ["constraints", "breadth"], "template": "wizardlm", **synth},
    }
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def good_reply(messages: list[dict], n: int) -> str:
    seed = given_prompt(messages)
    if seed is not None:  # evolve: the seed plus a real new constraint
        u = next(UNIQUE)
        extra = " ".join(f"note{u}w{j}" for j in range(6))  # distinct per request, across servers too
        return f"#Rewritten Prompt#: {seed} The customer needs an answer before Friday noon ({extra})."
    return json.dumps({"category": "billing", "priority": "high"})


def out_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synth_keeps_valid_rows_and_counts_drops(tmp_path, tiny_model_dir):
    calls = Counter()

    def reply(messages, n):
        seed = given_prompt(messages)
        kind = "evolve" if seed is not None else "answer"
        calls[kind] += 1
        k = calls[kind]
        if kind == "evolve":
            long = seed + " " + " ".join(f"detail{i}" for i in range(600))  # over max_seq_len once answered
            bad = {1: seed, 2: "   ", 3: "Here is #The Given Prompt# rewritten", 4: long}  # copy, empty, leak
            return bad.get(k) or good_reply(messages, n)
        if k == 2:
            return "I think it is about billing"  # fails the schema
        return json.dumps({"category": "technical", "priority": "low"})

    with FakeOpenAI(reply) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, srv.base_url))
        result = run_synth(cfg, show_progress=False)
    rows = out_rows(cfg.synth.output)
    assert result.seeds == 9 and result.attempts == 18  # 12 human rows, 3 held out for eval, never seeds
    assert result.kept == len(rows) > 0
    assert sum(result.dropped.values()) + result.kept == result.attempts
    assert result.dropped == {"copy_of_seed": 1, "empty_instruction": 1, "template_leak": 1, "schema": 1,
                              "overlength": 1}
    assert all(r["origin"] == "synthetic" and r["messages"][0]["content"] == SYSTEM for r in rows)
    assert all(json.loads(r["messages"][-1]["content"]) == {"category": "technical", "priority": "low"} for r in rows)
    summary = json.loads((tmp_path / "data" / "synthetic.jsonl.summary.json").read_text())
    assert summary["totals"]["kept"] == len(rows)

    # Seeds come from the train split only: no held-out ticket was sent to the generator.
    evals = [json.loads(x) for x in next((tmp_path / "datasets").glob("*/eval.jsonl")).read_text().splitlines()]
    held = {m["content"] for r in evals for m in r["messages"] if m["role"] == "user"}
    assert held and not any(h in r["messages"][1]["content"] for r in rows for h in held)

    # Rerun: everything decided is skipped, no request is made.
    with FakeOpenAI(lambda m, n: pytest.fail("no request expected")) as srv:
        again = run_synth(load_config(project(tmp_path, tiny_model_dir, srv.base_url)), show_progress=False)
    assert again.attempts == 0 and again.skipped_done == 18 and len(out_rows(cfg.synth.output)) == len(rows)


def test_schema_and_overlength_drops(tmp_path, tiny_model_dir):
    def reply(messages, n):
        if given_prompt(messages) is not None:
            return good_reply(messages, n)
        return "not json at all" if n % 4 == 2 else "{" + '"a": 1, ' * 400 + '"b": 2}'

    with FakeOpenAI(reply) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, srv.base_url, n_per_seed=1))
        result = run_synth(cfg, show_progress=False)
    assert result.kept == 0 and result.dropped["schema"] == 9


def test_endpoint_dies_mid_run_nothing_lost_and_rerun_finishes(tmp_path, tiny_model_dir):
    # About 3 attempts x 2 requests, then one more request; under load a slow request can be retried, so the exact
    # number of rows kept before the endpoint dies varies: the message must name it and the file must hold it.
    with FakeOpenAI(good_reply, die_after=7) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, srv.base_url))
        with pytest.raises(TailorError, match=r"failures in a row.*\d+ rows are safe.*rerun") as err:
            run_synth(cfg, show_progress=False)
    safe = int(re.search(r"(\d+) rows are safe", str(err.value)).group(1))
    rows = out_rows(cfg.synth.output)
    assert 1 <= safe < 18 and len(rows) == safe
    log = out_rows(tmp_path / "data" / "synthetic.jsonl.log.jsonl")
    assert Counter(x["status"] for x in log) == {"kept": safe, "error": 3}
    assert {x["kind"] for x in log if x["status"] == "error"} == {"down"}

    with FakeOpenAI(good_reply) as srv:
        result = run_synth(load_config(project(tmp_path, tiny_model_dir, srv.base_url)), show_progress=False)
    rows = out_rows(cfg.synth.output)
    assert result.skipped_done == safe and result.kept == 18 - safe and len(rows) == 18
    assert len({r["_attempt"] for r in rows}) == 18  # each attempt once: nothing redone, nothing lost


def test_slow_and_garbage_answers_are_counted_and_retried_later(tmp_path, tiny_model_dir):
    def reply(messages, n):
        if n == 3:
            return ("sleep", 3.0)  # over timeout_s = 2
        if n == 6:
            return (200, "<html>proxy error</html>")
        if n == 9:
            return (200, json.dumps({"choices": []}))
        return good_reply(messages, n)

    with FakeOpenAI(reply) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, srv.base_url))
        result = run_synth(cfg, show_progress=False)
    assert result.errors == {"timeout": 1, "garbage": 2}
    assert result.kept == 18 - 3
    with FakeOpenAI(good_reply) as srv:
        again = run_synth(load_config(project(tmp_path, tiny_model_dir, srv.base_url)), show_progress=False)
    assert again.attempts == 3 and again.kept == 3 and len(out_rows(cfg.synth.output)) == 18


def test_partial_last_line_is_trimmed_on_resume(tmp_path, tiny_model_dir):
    with FakeOpenAI(good_reply, die_after=4) as srv:
        cfg = load_config(project(tmp_path, tiny_model_dir, srv.base_url))
        with pytest.raises(TailorError):
            run_synth(cfg, show_progress=False)
    with open(cfg.synth.output, "a") as f:
        f.write('{"messages": [{"role": "user", "con')  # killed mid-write
    with FakeOpenAI(good_reply) as srv:
        run_synth(load_config(project(tmp_path, tiny_model_dir, srv.base_url)), show_progress=False)
    assert len(out_rows(cfg.synth.output)) == 18


def test_local_model_folder_as_generator(tmp_path, tiny_model_dir):
    path = project(tmp_path, tiny_model_dir, "http://unused")
    raw = yaml.safe_load(path.read_text())
    raw["synth"]["generator"] = {"model": str(tiny_model_dir)}
    raw["synth"].update(max_seeds=2, n_per_seed=1, max_new_tokens=8, answer_max_new_tokens=8, temperature=1.0)
    path.write_text(yaml.safe_dump(raw))
    result = run_synth(load_config(path), show_progress=False)
    # A random model writes noise: the attempts are decided (kept or dropped by reason), never errors.
    assert result.attempts == 2 and not result.errors
    assert result.kept + sum(result.dropped.values()) == 2


def test_synth_without_section_is_a_clear_error(tmp_path, tiny_model_dir):
    path = project(tmp_path, tiny_model_dir, "http://unused")
    raw = yaml.safe_load(path.read_text())
    del raw["synth"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TailorError, match="no synth section"):
        run_synth(load_config(path), show_progress=False)


def test_cli_synth_json_and_endpoint_down(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from llmtailor.cli.main import app

    with FakeOpenAI(good_reply) as srv:
        path = project(tmp_path, tiny_model_dir, srv.base_url, max_seeds=2, n_per_seed=1)
        r = CliRunner().invoke(app, ["data", "synth", "-c", str(path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["kept"] == 2 and out["totals"]["kept"] == 2
    # Nothing listens on port 9: one open attempt fails -> exit 1, the error counted, the 2 rows kept.
    down = project(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", max_seeds=3, n_per_seed=1)
    r = CliRunner().invoke(app, ["data", "synth", "-c", str(down), "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["errors"] == {"down": 1}
    down = project(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", max_seeds=6, n_per_seed=1)
    r = CliRunner().invoke(app, ["data", "synth", "-c", str(down), "--json"])
    assert isinstance(r.exception, TailorError) and "2 rows are safe" in str(r.exception)


def test_generator_never_sees_raw_personal_data(tmp_path, tiny_model_dir):
    seen: list[str] = []

    def reply(messages, n):
        seen.append(messages[-1]["content"])
        return good_reply(messages, n)

    path = project(tmp_path, tiny_model_dir, "http://unused", max_seeds=12, n_per_seed=1)
    rows = human_rows()
    for i, r in enumerate(rows):
        r["messages"][0]["content"] += f" Reach me at jane.doe{i}@example.com."
    write_jsonl(tmp_path / "data" / "tickets.jsonl", rows)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["pii"] = {"enabled": True, "entities": ["EMAIL_ADDRESS"]}
    with FakeOpenAI(reply) as srv:
        raw["synth"]["generator"]["base_url"] = srv.base_url
        path.write_text(yaml.safe_dump(raw))
        result = run_synth(load_config(path), show_progress=False)
    assert result.attempts == 9 and seen
    assert not any("@example.com" in text for text in seen) and any("<EMAIL>" in text for text in seen)
