"""Prefix cache: a shared system prompt's KV is computed once per adapter and reused; greedy answers are identical
to the uncached engine's (alone and in batches of different lengths), and /metrics reports the hit rate."""

from __future__ import annotations

import threading

from llmtailor.serve.app import chat_prefix_len
from llmtailor.serve.engine import GenRequest
from llmtailor.serve.metrics import parse
from tests.unit.serve.conftest import auth, build_engine

SYSTEM = "You are the ticket triage assistant of Acme Cloud. Answer with one short sentence, politely."
QUESTIONS = ["refund my invoice please", "cannot log in", "the portal is down since noon today", "hello"]


def _prompts(tok):
    out = []
    for q in QUESTIONS:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = tok(ids, add_special_tokens=False)["input_ids"]
        out.append((ids, chat_prefix_len(tok, msgs, ids)))
    return out


def _answers(engine, prompts, adapter=None, together=False):
    res = [""] * len(prompts)

    def go(i):
        ids, n = prompts[i]
        res[i] = engine.complete(GenRequest(ids, 10, adapter=adapter, prefix_len=n))[0]

    if together:
        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(prompts)):
            go(i)
    return res


def test_cached_answers_equal_uncached_alone_batched_and_with_an_adapter(project):
    adapter = project["cfg"].runs_dir / "run-good" / "adapter"
    plain = build_engine(prefix_cache_size=0, batch_wait_ms=40).start()
    cached = build_engine(prefix_cache_size=4, batch_wait_ms=40).start()
    for e in (plain, cached):
        e.add_adapter("good", adapter)
    prompts = _prompts(plain.tokenizer)
    n = prompts[0][1]
    assert n >= 20 and all(p[1] == n and p[0][:n] == prompts[0][0][:n] for p in prompts)  # the system part
    try:
        for adapter_name in (None, "good"):
            want = _answers(plain, prompts, adapter_name)
            assert adapter_name is None or len(set(want)) > 1  # the adapter's answers differ per question
            assert _answers(cached, prompts, adapter_name) == want
            assert _answers(cached, prompts, adapter_name, together=True) == want
        assert plain.prefix_hits == 0 and plain.prefix_misses == 0
        # One miss per adapter (base, good); every later batch reused the prefix.
        assert cached.prefix_misses == 2 and cached.prefix_hits >= 6
    finally:
        plain.stop()
        cached.stop()


def test_prefix_len_stops_where_the_user_text_starts(tiny_tokenizer):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello there"}]
    ids = tiny_tokenizer(tiny_tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"]
    n = chat_prefix_len(tiny_tokenizer, msgs, ids)
    head = tiny_tokenizer.decode(ids[:n])
    assert SYSTEM in head and "hello" not in head
    other = [{"role": "system", "content": "Something else entirely."}, msgs[1]]
    ids2 = tiny_tokenizer(tiny_tokenizer.apply_chat_template(other, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)["input_ids"]
    assert ids2[: chat_prefix_len(tiny_tokenizer, other, ids2)] != ids[:n]


def test_metrics_report_the_hit_rate(client):
    key = client.keys["acme"]
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    for q in ("hi", "refund", "login"):
        r = client.post("/v1/chat/completions", headers=auth(key),
                        json={"model": "tiny", "max_tokens": 3, "messages": [msgs[0], {"role": "user", "content": q}]})
        assert r.status_code == 200
    m = parse(client.get("/metrics", headers=auth(key)).text)
    assert m["llmtailor_prefix_cache_lookups_total{}"] == 3
    assert m["llmtailor_prefix_cache_hits_total{}"] == 2
    assert abs(m["llmtailor_prefix_cache_hit_rate{}"] - 2 / 3) < 1e-9
