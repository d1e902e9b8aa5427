"""The `direct` template for small generators and the separate answerer: what each model is asked, how the template
style is chosen, what the summary records, and that an answerer dying mid-run loses nothing."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import yaml
from pydantic import ValidationError

from llmtailor.config import load_config
from llmtailor.data.evol import OPS, clean_evolved, evolution_prompt, leaks_template, repetitive
from llmtailor.data.synth import SynthConfig, resolve_template, run_synth
from llmtailor.errors import TailorError
from tests.unit.data.test_synth import SYSTEM, out_rows, project
from tests.unit.fake_openai import FakeOpenAI

WIZARDLM_MARKERS = ("#The Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#", "Prompt Rewriter",
                    "Prompt Creator", "given prompt", "rewritten prompt")
_SEED = re.compile(r"Here is (?:a message that someone sent|another message):\n\n(.*?)\n\nWrite ", re.DOTALL)


def direct_seed(messages: list[dict]) -> str | None:
    """The seed inside a direct evolution prompt, or None for an answer request."""
    m = _SEED.search(messages[-1]["content"])
    return m.group(1) if m else None


def evolve_reply(messages: list[dict], n: int) -> str:
    """A small model's typical answer: an echoed label line, then a new ticket."""
    seed = direct_seed(messages)
    assert seed is not None, "the generator was asked to answer, not to evolve"
    return f"New message:\n{seed.split('.')[0]} and it broke again on day {n} after the update, says admin {n}."


def answer_reply(messages: list[dict], n: int) -> str:
    assert direct_seed(messages) is None, "the answerer was asked to evolve, not to answer"
    assert messages[0] == {"role": "system", "content": SYSTEM}
    return json.dumps({"category": "technical", "priority": "low"})


@pytest.mark.parametrize("op", OPS)
def test_direct_template_has_no_wizardlm_markers_and_holds_the_seed(op):
    seed = "Subject: Invoice INV-1 is wrong\n\nThe total is off by $12."
    examples = ["Subject: Login fails\n\nSince Monday.", "Subject: Refund\n\nStill missing."]
    text = evolution_prompt(op, seed, "direct", examples)[0]["content"]
    assert seed in text and all(ex in text for ex in examples)
    assert not any(marker.lower() in text.lower() for marker in WIZARDLM_MARKERS)
    assert "#" not in text
    wizard = evolution_prompt(op, seed, "wizardlm")[0]["content"]
    assert seed in wizard and "#The Given Prompt#" in wizard  # the paper's style is still there when asked for
    with pytest.raises(ValueError, match="unknown template"):
        evolution_prompt(op, seed, "auto")


def test_clean_and_leak_checks_for_small_model_output():
    assert clean_evolved("New message:\nSubject: Late order\n\nWhere is it?") == "Subject: Late order\n\nWhere is it?"
    assert clean_evolved("Sure! Here is the rewritten message:\nHi, my card fails.") == "Hi, my card fails."
    assert clean_evolved("Hi, my card fails.\n\nMessage 3:\nSubject: Other") == "Hi, my card fails."
    # A ticket's own first line is never cut: no colon at its end, or too long to be a label.
    assert clean_evolved("Subject: card fails\nHelp") == "Subject: card fails\nHelp"
    assert leaks_template("Write only the new message. Subject: x")
    assert leaks_template("Here is another message:\n\nSubject: x")
    assert not leaks_template("Subject: the new message from our CEO was lost")
    # Meta-text anywhere in the output (a small model's commentary on its own rewrite) is a leak too.
    assert leaks_template("Subject: Late order\n\nHere's the updated message:\nSubject: Late order")
    assert leaks_template("Subject: Combine work spaces\n\nMessage:\nSubject: late delivery")
    assert leaks_template("I'm sorry for the confusion, as an AI I cannot send messages.")
    assert not leaks_template("Subject: Invoice\n\nI got your message; here is the new invoice number: 12.")
    assert repetitive("Subject: Need a receipt\n" * 8)
    assert not repetitive("Subject: Tax ID needed on invoices. Invoice INV-7 was issued without our tax ID, please "
                          "also correct the company address on the billing profile before Friday.")


def test_answerer_answers_and_generator_evolves(tmp_path, tiny_model_dir):
    asked: Counter[str] = Counter()

    def gen(messages, n):
        asked["generator"] += 1
        return evolve_reply(messages, n)

    def ans(messages, n):
        asked["answerer"] += 1
        return answer_reply(messages, n)

    with FakeOpenAI(gen) as g, FakeOpenAI(ans) as a:
        path = project(tmp_path, tiny_model_dir, g.base_url, template="direct", fewshot=2,
                       answerer={"base_url": a.base_url, "endpoint_model": "teacher", "timeout_s": 2, "retries": 0})
        result = run_synth(load_config(path), show_progress=False)
    assert result.attempts == 18 and result.kept == 18 and not result.dropped and result.template == "direct"
    assert asked == {"generator": 18, "answerer": 18}
    rows = out_rows(tmp_path / "data" / "synthetic.jsonl")
    assert all(not r["messages"][1]["content"].startswith("New message") for r in rows)  # the label line is gone
    assert {r["synth"]["template"] for r in rows} == {"direct"}
    summary = json.loads((tmp_path / "data" / "synthetic.jsonl.summary.json").read_text())
    assert summary["generator"]["base_url"] == g.base_url
    assert summary["answerer"] == {"kind": "endpoint", "base_url": a.base_url, "model": "teacher"}
    assert summary["answerer_is_generator"] is False and summary["template"] == "direct"


def test_without_answerer_the_generator_answers(tmp_path, tiny_model_dir):
    calls: Counter[str] = Counter()

    def both(messages, n):
        kind = "evolve" if direct_seed(messages) is not None else "answer"
        calls[kind] += 1
        return evolve_reply(messages, n) if kind == "evolve" else answer_reply(messages, n)

    with FakeOpenAI(both) as srv:
        result = run_synth(load_config(project(tmp_path, tiny_model_dir, srv.base_url, template="direct",
                                               max_seeds=3, n_per_seed=1)), show_progress=False)
    assert result.kept == 3 and calls == {"evolve": 3, "answer": 3}
    summary = json.loads((tmp_path / "data" / "synthetic.jsonl.summary.json").read_text())
    assert summary["answerer"] == summary["generator"] and summary["answerer_is_generator"] is True


def test_auto_template_is_direct_for_endpoints_and_small_models(tmp_path, tiny_model_dir):
    prompts: list[str] = []

    def reply(messages, n):
        if direct_seed(messages) is not None or "#The Given Prompt#" in messages[-1]["content"]:
            prompts.append(messages[-1]["content"])
            return evolve_reply(messages, n) if direct_seed(messages) else "x"
        return answer_reply(messages, n)

    with FakeOpenAI(reply) as srv:
        path = project(tmp_path, tiny_model_dir, srv.base_url, max_seeds=2, n_per_seed=1)
        raw = yaml.safe_load(path.read_text())
        del raw["synth"]["template"]  # the default: auto
        path.write_text(yaml.safe_dump(raw))
        result = run_synth(load_config(path), show_progress=False)
    assert result.template == "direct" and len(prompts) == 2 and all("#" not in p for p in prompts)

    class Big:  # a local generator of 2B parameters, without allocating them
        class model:  # noqa: N801 - mimics LocalGenerator.model
            @staticmethod
            def parameters():
                return [type("P", (), {"numel": lambda self: 2_000_000_000})()]

    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    tiny = type("Local", (), {"model": build_tiny_model(build_tiny_tokenizer())})()
    assert resolve_template("auto", Big()) == "wizardlm"
    assert resolve_template("auto", tiny) == "direct"
    assert resolve_template("auto", object()) == "direct"
    assert resolve_template("wizardlm", tiny) == "wizardlm" and resolve_template("direct", Big()) == "direct"


@pytest.mark.parametrize("bad", [
    {"template": "gpt4"},
    {"fewshot": -1},
    {"fewshot": 9},
    {"noun": ""},
    {"noun": "message {seed}"},
    {"answerer": {"base_url": "ftp://teacher"}},
    {"answerer": {"run": "latest", "adapter": "a"}},
    {"answerer": {"modle": "x"}},
])
def test_bad_synth_values_are_config_errors(bad):
    with pytest.raises(ValidationError):
        SynthConfig(**bad)
    SynthConfig(**{"template": "direct", "fewshot": 0, "noun": "support ticket", "answerer": {"run": "latest"}})


def test_answerer_dies_mid_run_nothing_lost_and_rerun_finishes(tmp_path, tiny_model_dir):
    with FakeOpenAI(evolve_reply) as g, FakeOpenAI(answer_reply, die_after=4) as a:
        answerer = {"base_url": a.base_url, "timeout_s": 2, "retries": 0}
        path = project(tmp_path, tiny_model_dir, g.base_url, template="direct", answerer=answerer)
        with pytest.raises(TailorError, match=r"synth\.answerer: 3 failures in a row.*4 rows are safe"):
            run_synth(load_config(path), show_progress=False)
    assert len(out_rows(tmp_path / "data" / "synthetic.jsonl")) == 4
    with FakeOpenAI(evolve_reply) as g, FakeOpenAI(answer_reply) as a:
        answerer = {"base_url": a.base_url, "timeout_s": 2, "retries": 0}
        path = project(tmp_path, tiny_model_dir, g.base_url, template="direct", answerer=answerer)
        result = run_synth(load_config(path), show_progress=False)
    rows = out_rows(tmp_path / "data" / "synthetic.jsonl")
    assert result.skipped_done == 4 and result.kept == 14 and len({r["_attempt"] for r in rows}) == 18


def test_local_answerer_run_loaded_once(tmp_path, tiny_model_dir, monkeypatch):
    import llmtailor.data.generator as generator

    made: list = []
    real = generator.make_generator

    def spy(cfg, *args, **kwargs):
        made.append(cfg)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(generator, "make_generator", spy)
    with FakeOpenAI(evolve_reply) as g:
        path = project(tmp_path, tiny_model_dir, g.base_url, template="direct", max_seeds=2, n_per_seed=1,
                       answerer={"model": str(tiny_model_dir)}, answer_max_new_tokens=8)
        result = run_synth(load_config(path), show_progress=False)
    # The random local answerer writes noise: both attempts reach the answer step and fail there (never an
    # error); one load per model, the generator first.
    assert result.attempts == 2 and not result.errors and sum(result.dropped.values()) == 2
    assert set(result.dropped) <= {"schema", "empty_answer"}
    assert [c.base_url is not None for c in made] == [True, False]
