"""An endpoint generator sends OpenAI's `seed`, per call, so a repeated synth/RAFT run samples the same rows."""

from __future__ import annotations

from pathlib import Path

from llmtailor.data.generator import GeneratorConfig, make_generator
from tests.unit.fake_openai import FakeOpenAI

MSG = [{"role": "user", "content": "Write a new support message."}]


def _ask(base_url: str, seed: int, calls: int) -> None:
    gen = make_generator(GeneratorConfig(base_url=base_url, retries=0), None, Path("."), seed=seed)
    try:
        for _ in range(calls):
            assert gen.chat(MSG, temperature=0.7, max_tokens=8) == "ok"
    finally:
        gen.close()


def test_endpoint_calls_carry_a_reproducible_seed_each():
    with FakeOpenAI(lambda messages, n: "ok") as srv:
        _ask(srv.base_url, 7, 3)
        _ask(srv.base_url, 7, 3)  # the same run again
        _ask(srv.base_url, 8, 3)  # another synth.seed
        seeds = [b["seed"] for b in srv.bodies]
    first, again, other = seeds[:3], seeds[3:6], seeds[6:]
    assert first == again  # a rerun asks for the same samples
    assert len(set(first)) == 3  # each call its own draw, not one seed for every attempt
    assert not set(first) & set(other)
