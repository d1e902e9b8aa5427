"""`tailor data raft`: rows in the exact `rag ask` prompt, answers held by the oracle passage, declines without it,
passages never crossing tenants or audiences, documents (not rows) split, and clear errors for bad input."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from llmtailor.config import load_config
from llmtailor.data.raft import RaftConfig, contains_fact, readable_by_all_readers, run_raft, split_documents
from llmtailor.data.raft_rules import fact_questions, rule_questions
from llmtailor.errors import ConfigError, TailorError
from llmtailor.io import read_jsonl
from llmtailor.rag.acl import Caller, can_see
from llmtailor.rag.answer import build_messages
from llmtailor.rag.config import RagConfig
from llmtailor.rag.index import Index, delete_sources
from llmtailor.rag.ingest import Record, ingest_records
from llmtailor.rag.store import Chunk, Hit
from tests.unit.rag.conftest import CountingEmbedder

RAG = {"embedding": {"model": "hashing"}, "chunking": {"max_tokens": 60, "overlap_tokens": 8}, "index_dir": "idx",
       "answer": {"max_context_chunks": 3}}
DOCS = {
    "acme-returns": ("acme", "public", [], "Opened hardware can be returned within 14 days of delivery. "
                     "Refunds are issued within 5 business days."),
    "acme-leave": ("acme", "internal", [], "Employees get twenty-five days of paid holiday leave per year. "
                   "Parental leave is unpaid after the first 16 weeks."),
    "acme-salaries": ("acme", "confidential", ["hr"], "The salary review takes place on 1 March. "
                      "Bonuses are capped at 5,000 euros per year."),
    "acme-security": ("acme", "public", [], "Lost badges must be reported within 24 hours. "
                      "Passwords must be at least fourteen characters long."),
    "acme-travel": ("acme", "public", ["sales"], "Train travel is preferred for trips under 500 kilometres. "
                    "Flights shorter than six hours are booked in economy class."),
    "globex-pricing": ("globex", "public", [], "The Basic plan costs 9 euros per month. "
                       "Annual billing gives a 20% discount."),
    "globex-support": ("globex", "public", [], "Urgent incidents are answered within 30 minutes. "
                       "Access logs are retained for 90 days."),
    "globex-gym": ("globex", "public", [], "Group classes must be booked at least 24 hours in advance. "
                   "Lockers cost 1 euro per visit."),
}


def make_project(tmp_path, raft: dict | None = None, docs: dict = DOCS):
    records = [Record(key, text, title=key, meta={"tenant": t, "access_level": lvl, "groups": g})
               for key, (t, lvl, g, text) in docs.items()]
    if records:
        ingest_records(records, tmp_path / "idx", RagConfig.model_validate(RAG), embedder=CountingEmbedder())
    cfg = {"rag": RAG, "raft": {"heldout_fraction": 0.3, "unanswerable_share": 0.3, "rows_per_question": 2,
                                **(raft or {})}}
    (tmp_path / "tailor.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return load_config(tmp_path / "tailor.yaml")


def passages_of(user: str) -> dict[int, str]:
    """[n] -> passage text, parsed back out of the user turn."""
    body = user.split("Context passages:\n\n", 1)[1].rsplit("\n\nQuestion: ", 1)[0]
    out = {}
    for block in re.split(r"\n\n(?=\[\d+\] \(source: )", body):
        head, _, text = block.partition("\n")
        out[int(re.match(r"\[(\d+)\]", head).group(1))] = text
    return out


@pytest.fixture()
def built(tmp_path):
    cfg = make_project(tmp_path)
    result = run_raft(cfg)
    train = [r for _, r in read_jsonl(result.output)]
    held = [r for _, r in read_jsonl(result.heldout_output)]
    return cfg, result, train, held


def test_rules_turn_facts_and_question_headings_into_questions():
    q = fact_questions("Opened hardware can be returned within 14 days of delivery.")
    assert [(x.question, x.fact, x.kind) for x in q] == [
        ("Opened hardware can be returned within how many days of delivery?", "14 days", "duration")]
    both = fact_questions("A hotel room costs at most 150 euros per night and meals up to 40 euros a day.")
    assert [x.fact for x in both] == ["150 euros", "40 euros"]
    assert fact_questions("The founders met in Rotterdam.") == []
    heading = rule_questions("Yes, until the order ships. Contact support.", "Policy > Can I change the address?", 3)
    assert heading[0].question == "Can I change the address?" and heading[0].answer == "Yes, until the order ships"
    assert rule_questions("the rest of a cut sentence within 3 days", "", 3) == []  # a fragment, not a sentence


def test_answerable_rows_cite_the_oracle_that_holds_the_answer(built):
    cfg, result, train, held = built
    rows = train + held
    answerable = [r for r in rows if r["raft"]["answerable"]]
    assert answerable and all(r["origin"] == "synthetic" for r in rows)
    for r in answerable:
        meta, (_system, user, assistant) = r["raft"], r["messages"]
        passages = passages_of(user["content"])
        assert len(passages) <= 3 and meta["position"] in passages
        m = re.fullmatch(r"(.+) \[(\d+)\]\.", assistant["content"])
        assert m and int(m.group(2)) == meta["position"]
        oracle_text = passages[meta["position"]]
        assert m.group(1) in oracle_text and contains_fact(oracle_text, meta["fact"])
        others = [t for n, t in passages.items() if n != meta["position"]]
        assert not any(contains_fact(t, meta["fact"]) for t in others)  # the citation is unambiguous
    assert len({r["raft"]["position"] for r in answerable}) > 1  # the oracle is not always [1]


def test_unanswerable_rows_lack_the_oracle_and_decline_with_the_answerers_sentence(built):
    cfg, result, train, held = built
    declines = [r for r in train + held if not r["raft"]["answerable"]]
    assert declines
    for r in declines:
        meta = r["raft"]
        assert r["messages"][-1]["content"] == cfg.rag.answer.no_answer
        assert meta["oracle"] not in meta["passages"] and meta["passages"]
        assert not any(contains_fact(t, meta["fact"]) for t in passages_of(r["messages"][1]["content"]).values())


def test_rows_use_the_serving_prompt_exactly(built, tmp_path):
    cfg, result, train, held = built
    index = Index.open(tmp_path / "idx", cfg.rag, embedder=CountingEmbedder())
    try:
        by_id = {c.id: c for c in index.store.fetch(None)}
    finally:
        index.close()
    for r in train[:6] + held[:3]:
        hits = [Hit(by_id[i], 0.0) for i in r["raft"]["passages"]]
        assert r["messages"][:2] == build_messages(r["raft"]["question"], hits, cfg.rag.answer.system_prompt)


def test_no_row_shows_a_passage_the_questions_audience_cannot_read(built, tmp_path):
    cfg, result, train, held = built
    index = Index.open(tmp_path / "idx", cfg.rag, embedder=CountingEmbedder())
    try:
        by_id = {c.id: c.record() for c in index.store.fetch(None)}
    finally:
        index.close()
    assert set(result.tenants) == {"acme", "globex"}
    for r in train + held:
        oracle = by_id[r["raft"]["oracle"]]
        # Every caller who can read the oracle: its tenant and level, holding any one of its groups (or none).
        readers = [Caller(oracle["tenant"], (g,), oracle["access_level"]) for g in oracle["groups"]] or [
            Caller(oracle["tenant"], (), oracle["access_level"])]
        for pid in r["raft"]["passages"]:
            assert by_id[pid]["tenant"] == oracle["tenant"]
            assert all(can_see(caller, by_id[pid]) for caller in readers), (r["raft"]["question"], pid)


def test_documents_not_rows_are_split(built):
    cfg, result, train, held = built
    assert result.documents["train"] and result.documents["heldout"]
    train_docs = {r["raft"]["source"] for r in train}
    held_docs = {r["raft"]["source"] for r in held}
    assert train_docs and held_docs and not train_docs & held_docs
    # No passage of a held-out document is shown in a training row, and the other way round.
    train_passage_ids = {p for r in train for p in r["raft"]["passages"]}
    held_passage_ids = {p for r in held for p in r["raft"]["passages"]}
    assert not train_passage_ids & held_passage_ids


def test_split_is_seeded_pinned_and_never_empty():
    docs = [("t", f"d{i}") for i in range(10)]
    held = split_documents(docs, 0.3, 0)
    assert len(held) == 3 and held == split_documents(list(reversed(docs)), 0.3, 0)
    assert ("t", "d7") in split_documents(docs, 0.3, 0, ["d7"])
    assert split_documents(docs, 0.0, 0) == set()
    assert len(split_documents(docs[:2], 0.9, 0)) == 1  # never every document


def test_audience_rule_matches_acl():
    def chunk(tenant="a", level=0, groups=()):
        return Chunk("x", "s", "t", tenant=tenant, access_level=level, groups=list(groups))

    assert readable_by_all_readers(chunk(level=2), chunk(level=1))
    assert not readable_by_all_readers(chunk(level=1), chunk(level=2))
    assert not readable_by_all_readers(chunk("a"), chunk("b"))
    assert not readable_by_all_readers(chunk(), chunk(groups=["hr"]))  # an open oracle's reader may lack hr
    assert readable_by_all_readers(chunk(groups=["hr"]), chunk(groups=["hr", "it"]))
    assert not readable_by_all_readers(chunk(groups=["hr", "it"]), chunk(groups=["hr"]))


def test_empty_or_missing_index_and_bad_config_are_clear_errors(tmp_path):
    cfg = make_project(tmp_path, docs={})
    with pytest.raises(TailorError, match="index not found"):
        run_raft(cfg)
    (tmp_path / "empty").mkdir()
    cfg = make_project(tmp_path / "empty", docs={"d": ("t", "public", [], "The founders met in Rotterdam.")})
    with pytest.raises(TailorError, match="no question could be made"):
        run_raft(cfg)
    cfg = make_project(tmp_path, raft={"heldout_documents": ["nope.md"]}, docs={})
    cfg.raft.index = tmp_path / "empty" / "idx"
    with pytest.raises(TailorError, match="nope.md"):
        run_raft(cfg)
    delete_sources(tmp_path / "empty" / "idx", ["record:d"], RagConfig.model_validate(RAG))
    with pytest.raises(TailorError, match="has no chunks"):
        run_raft(cfg)
    (tmp_path / "bad.yaml").write_text("rag: {index_dir: idx}\nraft:\n  unanswerable_share: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: raft.unanswerable_share"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError):
        RaftConfig.model_validate({"questions": "llm"})


def test_cli_writes_rows_and_reports_json(tmp_path):
    from typer.testing import CliRunner

    from llmtailor.cli.main import app

    make_project(tmp_path)
    res = CliRunner().invoke(app, ["data", "raft", "-c", str(tmp_path / "tailor.yaml"), "--json",
                                   "--out", str(tmp_path / "rows.jsonl"), "--heldout", str(tmp_path / "held.jsonl")])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["rows"]["train_answerable"] > 0 and report["questions_from"] == "rules"
    assert (tmp_path / "rows.jsonl").exists() and (tmp_path / "held.jsonl").exists()


class FakeGenerator:
    """Answers like a generator model: a supported question for passages about leave, an invented one otherwise."""

    name = "fake"

    def __init__(self):
        self.calls = 0

    def chat(self, messages, *, temperature, max_tokens):
        self.calls += 1
        passage = messages[-1]["content"].split("Passage:\n", 1)[1]
        if "holiday leave" in passage:
            return "Question: How much holiday leave do employees get?\nAnswer: twenty-five days of paid holiday leave"
        return "Question: What is the moon made of?\nAnswer: green cheese"

    def close(self):
        pass


def test_generator_questions_are_checked_against_the_passage_and_resumable(tmp_path):
    cfg = make_project(tmp_path, raft={"heldout_fraction": 0.0, "unanswerable_share": 0.0})
    gen = FakeGenerator()
    result = run_raft(cfg, generator=gen)
    rows = [r for _, r in read_jsonl(result.output)]
    assert result.questions_from == "generator" and gen.calls == 8
    assert {r["raft"]["question"] for r in rows} == {"How much holiday leave do employees get?"}
    assert rows[0]["messages"][-1]["content"].startswith("twenty-five days of paid holiday leave [")
    log = (tmp_path / "data" / "raft.jsonl.questions.jsonl.log.jsonl").read_text(encoding="utf-8")
    assert log.count('"unsupported_answer"') == 7
    again = FakeGenerator()
    run_raft(cfg, generator=again)
    assert again.calls == 0  # every chunk was decided: the journal is reused, nothing asked twice
