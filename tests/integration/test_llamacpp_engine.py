"""Integration: the llama.cpp engine on the packaged SmolLM2 GGUF, behind the same server front.

Real llama.cpp decoding (llama-cpp-python, installed by CI), a real HTTP server on localhost for the SDK test,
real adapters exported to GGUF. Skips only where llama-cpp-python is not installed, and says so.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'llmtailor[llamacpp]')")


@pytest.fixture(scope="module")
def smol():
    from llmtailor.config import ModelConfig
    from llmtailor.export.gguf import base_gguf
    from llmtailor.models import load_tokenizer

    cfg = ModelConfig()
    return base_gguf(cfg), load_tokenizer(cfg)


@pytest.fixture(scope="module")
def engine(smol):
    from llmtailor.export.gguf import cached_adapter_gguf
    from llmtailor.serve.llamacpp_engine import LlamaCppEngine

    gguf, tok = smol
    eng = LlamaCppEngine(gguf, tok, slots=3, n_ctx=1024, adapter_gguf=lambda p: cached_adapter_gguf(p, gguf))
    eng.start()
    yield eng
    eng.stop()


def ids_for(tok, text: str, system: str | None = None) -> list[int]:
    from llmtailor.chat import prompt_ids

    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return prompt_ids(tok, msgs)


def test_greedy_answer_matches_llama_cpp_itself_and_streams(engine, smol):
    from llama_cpp import Llama

    from llmtailor.serve.engine import GenRequest

    gguf, tok = smol
    ids = ids_for(tok, "What is the capital of France? Answer in one sentence.")
    text, final = engine.complete(GenRequest(ids, 24))
    assert "Paris" in text and final.finish_reason in ("stop", "length") and final.completion_tokens <= 24
    # Same tokens as llama.cpp's own greedy loop on the same ids: the engine adds streaming, not changes.
    llm = Llama(model_path=str(gguf), n_ctx=1024, verbose=False)
    want = []
    for t in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if t in engine.eos_ids or len(want) >= 24:
            break
        want.append(t)
    assert text == tok.decode(want, skip_special_tokens=True)


def test_concurrent_requests_interleave_and_each_get_their_own_answer(engine, smol):
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello."]
    alone = [engine.complete(GenRequest(ids_for(tok, q), 16))[0] for q in questions]
    out: list[str | None] = [None] * len(questions)

    def ask(i: int) -> None:
        out[i] = engine.complete(GenRequest(ids_for(tok, questions[i]), 16))[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out == alone  # 4 requests on 3 slots, round-robin: no cross-talk between KV caches


def test_stop_strings_max_tokens_and_cancel(engine, smol):
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    ids = ids_for(tok, "Count from 1 to 30, separated by commas.")
    text, final = engine.complete(GenRequest(ids, 40))
    assert "3" in text
    cut, final = engine.complete(GenRequest(ids, 40, stop=["5"]))
    assert "5" not in cut and final.finish_reason == "stop" and text.startswith(cut)
    short, final = engine.complete(GenRequest(ids, 5))
    assert final.finish_reason == "length" and final.completion_tokens == 5
    # A cancelled request stops being decoded: its slot is free again right away.
    req = GenRequest(ids, 400)
    events = []
    req.emit = events.append
    engine.submit(req)
    time.sleep(0.5)
    req.cancel()
    deadline = time.time() + 10
    while time.time() < deadline and any(s.req is req for s in engine.slots):
        time.sleep(0.05)
    assert all(s.req is not req for s in engine.slots) and len(req.ids) < 400


def test_prefix_of_a_slot_is_reused(engine, smol):
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    system = "You are the triage assistant of Acme Cloud. " * 8
    engine.complete(GenRequest(ids_for(tok, "First question?", system), 4))
    hits = engine.prefix_hits
    engine.complete(GenRequest(ids_for(tok, "Second question?", system), 4))
    assert engine.prefix_hits == hits + 1


def test_json_schema_through_llama_grammar(engine, smol):
    from llmtailor.serve.engine import GenRequest
    from llmtailor.serve.structured import ResponseFormat, ResponseFormatError, validate

    _, tok = smol
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    fmt = ResponseFormat("json_schema", schema, "city")
    req = GenRequest(ids_for(tok, "Give the largest city of France and its population as JSON."), 60,
                     constraint=engine.structured().constraint(fmt, 60))
    text, final = engine.complete(req)
    assert final.finish_reason == "stop" and validate(text, fmt) is None, text
    assert set(json.loads(text)) == {"city", "population"}
    with pytest.raises(ResponseFormatError):
        engine.structured().constraint(ResponseFormat("json_schema", {"type": "object", "properties": {
            "x": {"type": "string", "pattern": "(unclosed"}}}, "bad"), 60)


def test_adapters_change_answers_and_dora_is_refused(engine, smol, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from llmtailor.config import ModelConfig
    from llmtailor.errors import UnsupportedAdapter
    from llmtailor.models import load_model
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    model, _ = load_model(ModelConfig(precision="fp32"))
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    peft.save_pretrained(tmp_path / "lora")
    dora = get_peft_model(peft.unload(), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    dora.save_pretrained(tmp_path / "dora")

    ids = ids_for(tok, "What is the capital of France?")
    engine.add_adapter("noisy", tmp_path / "lora")
    base, _ = engine.complete(GenRequest(ids, 16))
    tuned, _ = engine.complete(GenRequest(ids, 16, adapter="noisy"))
    assert tuned != base and engine.loaded_adapters == ["noisy"]
    again, _ = engine.complete(GenRequest(ids, 16))
    assert again == base  # switching back to the base drops the adapter (and the slot's stale KV cache)
    with pytest.raises(UnsupportedAdapter, match="DoRA"):
        engine.add_adapter("dora", tmp_path / "dora")


def test_choose_engine_rules(monkeypatch, tmp_path):
    from llmtailor.config import ModelConfig
    from llmtailor.errors import TailorError
    from llmtailor.serve import llamacpp_engine
    from llmtailor.serve.engines import choose_engine

    assert choose_engine(ModelConfig(), "auto").name == "llamacpp"
    assert choose_engine(ModelConfig(), "transformers").name == "transformers"
    monkeypatch.setattr(llamacpp_engine, "llama_cpp_available", lambda: False)
    assert choose_engine(ModelConfig(), "auto").name == "transformers"
    with pytest.raises(TailorError, match=r"llmtailor\[llamacpp\]"):
        choose_engine(ModelConfig(), "llamacpp")


def test_queue_is_bounded_and_admits_round_robin_across_keys(engine, smol):
    from llmtailor.serve.engine import GenRequest, QueueFull

    _, tok = smol
    ids = ids_for(tok, "Say hello.")
    bound = engine.max_queue
    engine.max_queue = 8
    try:
        with engine._cond:  # the worker cannot admit while the test holds the (re-entrant) lock
            flood = [engine.submit(GenRequest(ids, 2, owner="key-A")) for _ in range(7)]
            late = engine.submit(GenRequest(ids, 2, owner="key-B"))
            with pytest.raises(QueueFull):
                engine.submit(GenRequest(ids, 2, owner="key-C"))
            engine._admit()
            started = [s.req for s in engine.slots if s.req is not None]
            assert late in started and len(started) == len(engine.slots)  # B starts now, not after A's seven
            for r in flood:
                r.cancel()
    finally:
        engine.max_queue = bound


# ---- continuous batching: one model, one context, several sequences per decode call ---------------------------
class _BatchSizes:
    """EngineStats that records the batch sizes the engine reports."""

    def __init__(self):
        self.sizes: list[int] = []

    def batch(self, size, adapters):
        self.sizes.append(size)

    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.fixture(scope="module")
def wide(smol):
    from llmtailor.export.gguf import cached_adapter_gguf
    from llmtailor.serve.llamacpp_engine import LlamaCppEngine

    gguf, tok = smol
    eng = LlamaCppEngine(gguf, tok, slots=8, n_ctx=512, stats=_BatchSizes(),
                         adapter_gguf=lambda p: cached_adapter_gguf(p, gguf))
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def two_loras(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model

    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model

    model, _ = load_model(ModelConfig(precision="fp32"))
    out = tmp_path_factory.mktemp("loras")
    for seed, name in [(1, "one"), (2, "two")]:
        torch.manual_seed(seed)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
        peft.save_pretrained(out / name)
        model = peft.unload()
    return out / "one", out / "two"


QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello.",
             "Count from 1 to 10.", "Write a haiku about the sea.", "What is Python?", "Describe a cat."]


def _together(engine, reqs, also=()):
    """Submit all requests (and `also`, whose events the caller handles) before the worker can admit any (it needs
    the lock), then wait for every answer of `reqs`."""
    import queue

    from llmtailor.serve.engine import Event

    queues: list[queue.Queue[Event]] = []
    with engine._cond:
        for r in reqs:
            q: queue.Queue[Event] = queue.Queue()
            r.emit = q.put
            queues.append(q)
            engine.submit(r)
        for r in also:
            engine.submit(r)
    out = []
    for q in queues:
        parts = []
        while True:
            ev = q.get(timeout=120)
            if ev.kind == "delta":
                parts.append(ev.text)
            elif ev.kind == "error":
                raise ev.error
            else:
                out.append(("".join(parts), ev.finish_reason))
                break
    return out


def test_eight_concurrent_greedy_requests_equal_their_answers_alone_in_shared_decode_calls(wide, smol):
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    alone = [wide.complete(GenRequest(ids_for(tok, q), 24))[0] for q in QUESTIONS]
    wide.stats.sizes.clear()
    calls0 = len(wide.ctx.seqs_per_decode)
    together = _together(wide, [GenRequest(ids_for(tok, q), 24) for q in QUESTIONS])
    assert [t for t, _ in together] == alone  # no cross-talk between the sequences of one batch
    assert max(wide.ctx.seqs_per_decode[calls0:]) == 8  # all eight in one llama_decode call
    assert max(wide.stats.sizes) == 8
    assert wide.models_loaded == 1


def test_two_adapters_and_the_base_together_each_equal_their_answer_alone(wide, smol, two_loras):
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    wide.add_adapter("one", two_loras[0])
    wide.add_adapter("two", two_loras[1])
    asks = [(q, a) for q in QUESTIONS[:3] for a in (None, "one", "two")]
    alone = [wide.complete(GenRequest(ids_for(tok, q), 16, adapter=a))[0] for q, a in asks]
    assert alone[0] != alone[1] and alone[0] != alone[2]  # the adapters change the answers
    switches = wide.ctx.adapter_switches
    together = _together(wide, [GenRequest(ids_for(tok, q), 16, adapter=a) for q, a in asks])
    assert [t for t, _ in together] == alone
    assert wide.ctx.adapter_switches > switches
    # Each adapter loaded once on the one model, however many sequences used it at once.
    assert wide.adapter_handles == 2 and wide.adapter_loads == 2 and wide.models_loaded == 1


def test_cancelling_one_request_mid_batch_leaves_the_others_unchanged(wide, smol):
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    alone = [wide.complete(GenRequest(ids_for(tok, q), 24))[0] for q in QUESTIONS[:3]]
    victim = GenRequest(ids_for(tok, "Count from 1 to 300, separated by commas."), 400)
    cancel_at = 5

    def emit(ev):
        if len(victim.ids) >= cancel_at:
            victim.cancel()

    others = [GenRequest(ids_for(tok, q), 24) for q in QUESTIONS[:3]]
    victim.emit = emit
    got = _together(wide, others, also=[victim])
    assert [t for t, _ in got] == alone
    deadline = time.time() + 10
    while time.time() < deadline and any(s.req is victim for s in wide.slots):
        time.sleep(0.05)
    assert victim.finish_reason == "cancelled" and len(victim.ids) < 400


def test_grammar_request_beside_a_free_one(wide, smol):
    from llmtailor.serve.engine import GenRequest
    from llmtailor.serve.structured import ResponseFormat

    _, tok = smol
    free_ids = ids_for(tok, QUESTIONS[6])
    alone, _ = wide.complete(GenRequest(free_ids, 24))
    fmt = ResponseFormat("json_object", None, "obj")
    constrained = GenRequest(ids_for(tok, "Give the largest city of France and its population as JSON."), 60,
                             constraint=wide.structured().constraint(fmt, 60))
    (doc, reason), (free, _) = _together(wide, [constrained, GenRequest(free_ids, 24)])
    assert free == alone
    assert reason == "stop" and isinstance(json.loads(doc), dict), doc


def test_sampled_requests_with_a_seed_repeat(wide, smol):
    from llmtailor.serve.engine import GenRequest

    _, tok = smol
    ids = ids_for(tok, "Write a haiku about the sea.")

    def sampled():
        return GenRequest(ids, 16, temperature=0.9, top_p=0.9, seed=1234)

    a, b = _together(wide, [sampled(), sampled()])
    assert a == b and a[0]
