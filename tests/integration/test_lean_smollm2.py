"""Integration: the lean decoding step on the packaged SmolLM2 (bf16 where the CPU computes it natively, as served)
gives the transformers engine the same greedy answers as transformers' own forward, for one stream and for a
left-padded batch of three."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "A customer cannot log in after resetting the password. Which team should handle the ticket?"]


def test_lean_and_transformers_steps_give_the_same_answers(monkeypatch):
    from llmtailor.chat import prompt_ids
    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model
    from llmtailor.serve.engine import Engine, GenRequest
    from llmtailor.serve.lean import LeanDecoder

    model, tok = load_model(ModelConfig())
    ids = [prompt_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    calls = {"n": 0}
    real = LeanDecoder.step

    def counted(self, *a, **kw):
        calls["n"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(LeanDecoder, "step", counted)
    answers = {}
    for lean in (False, True):
        engine = Engine(model, tok, lean_decode=lean, prefix_cache_size=0)
        one = GenRequest(ids[0], 24)
        engine._run([one])
        batch = [GenRequest(x, 24) for x in ids]
        engine._run(batch)
        answers[lean] = [one.ids] + [r.ids for r in batch]
    assert calls["n"] > 0
    assert answers[True] == answers[False]
    assert "Paris" in tok.decode(answers[True][0])
