"""The engine's own decoding loop (continuous batching): greedy answers equal plain `generate` token for token, alone,
in a batch, and when a request joins a batch that is already decoding (base, adapter and cached-prefix rows, full and
sliding-window attention, fp32 and bf16); rows leave when done or cancelled; stop strings, EOS and max_tokens end a
request; sampling follows transformers' temperature and top-p rules; incremental detokenization equals a full decode.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from llmtailor.serve.batching import Detok, choose
from llmtailor.serve.engine import Engine, EngineStats, Event, GenRequest
from tests.conftest import build_tiny_model, build_tiny_tokenizer
from tests.unit.serve.conftest import make_adapter

TEXTS = ["The customer cannot log in", "refund my invoice please", "hello world 42",
         '{"category": "billing", "team": "finance"}']


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def scale_up(model):
    """Scale a random model's weights up so that greedy answers vary from token to token (the plain tiny model repeats
    one token, which would hide a row mix-up); queries and keys only a little, so attention stays spread over many
    positions and a wrong mask or a misplaced column changes the answer."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(2 if ("q_proj" in name or "k_proj" in name) else 16)
    return model.eval()


def spiky(tok, dtype=None):
    model = scale_up(build_tiny_model(tok))
    return model.to(dtype) if dtype is not None else model


def sliding(tok):
    """A tiny Qwen2 whose second layer attends to a window of 6 tokens (first layer: full attention)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      use_sliding_window=True, sliding_window=6, max_window_layers=1, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    return scale_up(Qwen2ForCausalLM(cfg))


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def reference(model, tok, ids: list[int], n: int) -> list[int]:
    """Plain greedy `generate` of one prompt, cut at EOS."""
    import torch

    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[0, len(ids):].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


class Recorder(EngineStats):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.finished_reasons: list[str | None] = []

    def batch(self, size: int, adapters: int) -> None:
        self.sizes.append(size)

    def finished(self, req: GenRequest, tokens: int, seconds: float) -> None:
        self.finished_reasons.append(req.finish_reason)


class Job:
    """A submitted request and the events it received."""

    def __init__(self, engine: Engine, ids: list[int], n: int, **kw) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()
        self.done_at = 0.0
        self.req = GenRequest(ids, n, emit=self._emit, **kw)
        engine.submit(self.req)

    def _emit(self, ev: Event) -> None:
        self.events.append(ev)
        if ev.kind != "delta":
            self.done_at = time.perf_counter()
            self.done.set()

    def wait(self) -> Job:
        assert self.done.wait(120), "request did not finish"
        assert self.events[-1].kind == "done", self.events[-1].error
        return self

    @property
    def text(self) -> str:
        return "".join(ev.text for ev in self.events if ev.kind == "delta")


def wait_for(cond, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.002)


def test_greedy_equals_generate_alone_and_together(tok):
    model = spiky(tok)
    prompts = [ids_of(tok, t) for t in TEXTS]
    budgets = [40, 40, 40, 10]  # the longest prompt leaves first: the others' padding columns are cut off
    want = [reference(model, tok, p, n) for p, n in zip(prompts, budgets, strict=True)]
    assert len({tuple(w) for w in want}) == len(want) and all(len(set(w)) > 5 for w in want)
    engine = Engine(model, tok, batch_wait_ms=50).start()
    try:
        assert [Job(engine, p, n).wait().req.ids for p, n in zip(prompts, budgets, strict=True)] == want
        jobs = [Job(engine, p, n) for p, n in zip(prompts, budgets, strict=True)]  # one burst, left-padded
        assert [j.wait().req.ids for j in jobs] == want
        assert [j.text for j in jobs] == [tok.decode(w, skip_special_tokens=True) for w in want]
        assert engine.batches_run == len(prompts) + 1
    finally:
        engine.stop()


def test_requests_join_a_running_batch_and_leave_when_done(tok, tmp_path: Path):
    from peft import PeftModel

    adapter = make_adapter(tmp_path / "good", 11)
    prompts = [ids_of(tok, t) for t in TEXTS]
    want_a = reference(spiky(tok), tok, prompts[0], 150)
    want_b = reference(spiky(tok), tok, prompts[1], 12)
    want_c = reference(PeftModel.from_pretrained(spiky(tok), adapter).eval(), tok, prompts[2], 30)
    want_d = reference(spiky(tok), tok, prompts[3], 30)
    stats = Recorder()
    engine = Engine(spiky(tok), tok, batch_wait_ms=0, stats=stats).start()
    engine.add_adapter("good", adapter)
    try:
        a = Job(engine, prompts[0], 150)
        wait_for(lambda: len(a.req.ids) >= 10)
        b = Job(engine, prompts[1], 12)
        c = Job(engine, prompts[2], 30, adapter="good")  # a LoRA row joins the base rows (mixed-adapter forward)
        d = Job(engine, prompts[3], 30, prefix_len=10)  # a row whose head comes from the prefix cache
        for j in (a, b, c, d):
            j.wait()
        assert not a.done_at < max(b.done_at, c.done_at, d.done_at)  # the long one ran on while the others came, went
        assert (a.req.ids, b.req.ids, c.req.ids, d.req.ids) == (want_a, want_b, want_c, want_d)
        assert engine.batches_run == 1 and max(stats.sizes) >= 3 and engine.prefix_misses == 1
        assert len(set(want_c) - set(want_a)) > 0  # the adapter's answer is its own
    finally:
        engine.stop()


def test_sliding_window_attention_joins_correctly(tok):
    model = sliding(tok)
    prompts = [ids_of(tok, t) for t in (TEXTS[2], TEXTS[0], TEXTS[3], TEXTS[1])]
    budgets = [30, 30, 8, 30]  # the longest prompt leaves first: padding columns are cut from both layer kinds
    want = [reference(model, tok, p, n) for p, n in zip(prompts, budgets, strict=True)]
    engine = Engine(model, tok, batch_wait_ms=0).start()
    try:
        first = Job(engine, prompts[0], 30)  # 9 prompt tokens: already beyond the window of 6
        wait_for(lambda: len(first.req.ids) >= 2)
        # longer than the running batch: it is padded on the left; they join as one prefilled group
        jobs = [first] + [Job(engine, p, n) for p, n in zip(prompts[1:], budgets[1:], strict=True)]
        assert [j.wait().req.ids for j in jobs] == want
    finally:
        engine.stop()


def test_bf16_model_is_served_in_bf16_and_matches_generate(tok):
    import torch

    model = spiky(tok, torch.bfloat16)
    prompts = [ids_of(tok, t) for t in TEXTS[:2]]
    want = [reference(model, tok, p, 30) for p in prompts]
    engine = Engine(model, tok).start()
    try:
        assert [Job(engine, p, 30).wait().req.ids for p in prompts] == want
        assert next(engine.model.parameters()).dtype == torch.bfloat16
    finally:
        engine.stop()


def test_cancelled_row_leaves_and_the_others_carry_on(tok):
    prompts = [ids_of(tok, t) for t in TEXTS]
    want = reference(spiky(tok), tok, prompts[0], 80)
    stats = Recorder()
    engine = Engine(spiky(tok), tok, batch_wait_ms=30, stats=stats).start()
    try:
        a, b = Job(engine, prompts[0], 80), Job(engine, prompts[1], 80)
        wait_for(lambda: len(b.req.ids) >= 5)
        b.req.cancel()
        assert a.wait().req.ids == want
        assert b.req.finish_reason == "cancelled" and len(b.req.ids) < 80
        assert not b.done.is_set()  # nobody listens any more: no final event
        assert sorted(stats.finished_reasons, key=str) == ["cancelled", "length"]
    finally:
        engine.stop()


def test_stop_string_eos_and_max_tokens_end_a_request(tok):
    model = spiky(tok)
    prompt = ids_of(tok, TEXTS[3])
    want = reference(model, tok, prompt, 30)
    full = tok.decode(want, skip_special_tokens=True)
    engine = Engine(model, tok).start()
    try:
        text, ev = engine.complete(GenRequest(prompt, 30))
        assert (text, ev.finish_reason, ev.completion_tokens) == (full, "length", 30)
        k = next(k for k in range(6, len(full) - 3) if full.find(full[k:k + 3]) == k and full[k:k + 3].strip())
        text, ev = engine.complete(GenRequest(prompt, 30, stop=[full[k:k + 3]]))
        assert (text, ev.finish_reason) == (full[:k], "stop")
        engine.eos_ids = [want[8]]  # pretend the 9th token is EOS: the answer ends before its first occurrence
        text, ev = engine.complete(GenRequest(prompt, 30))
        cut = want.index(want[8])
        assert (text, ev.finish_reason, ev.completion_tokens) == (
            tok.decode(want[:cut], skip_special_tokens=True), "stop", cut)
    finally:
        engine.stop()


def test_sampling_rows_next_to_greedy_rows(tok):
    import torch

    prompts = [ids_of(tok, t) for t in TEXTS[:2]]
    want = [reference(spiky(tok), tok, p, 30) for p in prompts]
    engine = Engine(spiky(tok), tok, batch_wait_ms=50).start()
    try:
        # top_p tiny: only the most likely token survives the nucleus, so sampling gives the greedy answer
        assert Job(engine, prompts[0], 30, temperature=0.8, top_p=1e-9).wait().req.ids == want[0]
        runs = []
        for _ in range(2):
            torch.manual_seed(7)
            runs.append(Job(engine, prompts[0], 30, temperature=20.0).wait().req.ids)
        assert runs[0] == runs[1] != want[0]  # reproducible under a seed, and really sampled
        hot = Job(engine, prompts[0], 30, temperature=20.0, top_p=0.9)
        greedy = Job(engine, prompts[1], 30)  # same batch as the sampled row
        assert greedy.wait().req.ids == want[1] and hot.wait().req.ids != want[0]
    finally:
        engine.stop()


def test_a_seeded_request_repeats_whatever_shares_its_batch(tok):
    prompts = [ids_of(tok, t) for t in TEXTS[:2]]
    engine = Engine(spiky(tok), tok, batch_wait_ms=50).start()
    try:
        alone = Job(engine, prompts[0], 30, temperature=20.0, seed=11).wait().req.ids
        # The same seed beside two unseeded sampled rows (which consume the global generator) gives the same tokens.
        jobs = [Job(engine, prompts[0], 30, temperature=20.0, seed=11),
                Job(engine, prompts[1], 30, temperature=20.0), Job(engine, prompts[0], 30, temperature=20.0)]
        assert jobs[0].wait().req.ids == alone
        other = Job(engine, prompts[0], 30, temperature=20.0, seed=12).wait().req.ids
        assert other != alone  # the seed really drives the draw
    finally:
        engine.stop()


def test_choose_follows_transformers_temperature_and_top_p():
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    scores = torch.randn(1, 300, generator=torch.Generator().manual_seed(3)) * 3
    for t, p in ((0.7, 0.3), (1.3, 0.9), (1.0, 1.0)):
        for seed in range(5):
            warped = TemperatureLogitsWarper(t)(None, scores.clone())
            if p < 1.0:
                warped = TopPLogitsWarper(p)(None, warped)
            torch.manual_seed(seed)
            expect = int(torch.multinomial(warped.softmax(-1), 1))
            torch.manual_seed(seed)
            assert choose(scores.clone(), [t], [p]) == [expect]
    both = torch.cat([scores, scores])
    assert choose(both, [0.0, 1.0], [1.0, 0.5])[0] == int(scores.argmax())


def test_incremental_detokenization_equals_full_decode(tok):
    import random

    rng = random.Random(5)
    for _ in range(40):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 60))]
        d = Detok(tok)
        for k in range(1, len(ids) + 1):
            assert d.text(ids[:k]) == tok.decode(ids[:k], skip_special_tokens=True)


def test_an_adapter_in_use_is_never_evicted(tok, tmp_path: Path):
    from peft import PeftModel

    paths = {"one": make_adapter(tmp_path / "one", 21), "two": make_adapter(tmp_path / "two", 22)}
    prompts = [ids_of(tok, t) for t in TEXTS[:2]]
    want = {n: reference(PeftModel.from_pretrained(spiky(tok), p).eval(), tok, prompts[0], 60)
            for n, p in paths.items()}
    engine = Engine(spiky(tok), tok, max_loaded_adapters=1, batch_wait_ms=0).start()
    for n, p in paths.items():
        engine.add_adapter(n, p)
    try:
        one = Job(engine, prompts[0], 60, adapter="one")
        wait_for(lambda: len(one.req.ids) >= 3)
        two = Job(engine, prompts[0], 60, adapter="two")  # must wait: the only adapter slot is busy
        assert one.wait().req.ids == want["one"] and two.wait().req.ids == want["two"]
        assert two.req.first_token_at > one.done_at
        assert engine.loaded_adapters == ["two"]
    finally:
        engine.stop()


def test_a_cache_that_cannot_be_joined_waits_for_the_batch_to_end(tok, monkeypatch):
    import llmtailor.serve.engine as engine_mod

    monkeypatch.setattr(engine_mod, "mergeable", lambda cache: False)
    prompts = [ids_of(tok, t) for t in TEXTS[:2]]
    want = [reference(spiky(tok), tok, p, 40) for p in prompts]
    engine = Engine(spiky(tok), tok, batch_wait_ms=0).start()
    try:
        a = Job(engine, prompts[0], 40)
        wait_for(lambda: len(a.req.ids) >= 3)
        b = Job(engine, prompts[1], 40, prefix_len=8)
        assert a.wait().req.ids == want[0] and b.wait().req.ids == want[1]
        assert b.req.first_token_at > a.done_at and engine.batches_run == 2
        assert engine.prefix_misses == 0  # no prefix cache for such models
    finally:
        engine.stop()


def test_adapter_layers_switch_per_batch_change_not_per_token(tok, tmp_path: Path, monkeypatch):
    """With an adapter loaded, a base request's forward must not enter PEFT's `disable_adapter()` context: it walks
    the whole model on entry and exit, every token (base requests ran at about half speed, bench/results/serve.md).
    The layers are switched once when a batch changes between base and adapter, and answers stay exact."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    adapter = make_adapter(tmp_path / "good", 11)
    prompts = [ids_of(tok, t) for t in TEXTS[:2]]
    want_base = reference(spiky(tok), tok, prompts[0], 20)
    want_ad = reference(PeftModel.from_pretrained(spiky(tok), adapter).eval(), tok, prompts[1], 20)
    switches = {"on": 0, "off": 0, "context": 0}
    real_on, real_off = BaseTuner.enable_adapter_layers, BaseTuner.disable_adapter_layers

    def on(self):
        switches["on"] += 1
        return real_on(self)

    def off(self):
        switches["off"] += 1
        return real_off(self)

    real_ctx = PeftModel.disable_adapter

    def ctx(self):
        switches["context"] += 1
        return real_ctx(self)

    monkeypatch.setattr(BaseTuner, "enable_adapter_layers", on)
    monkeypatch.setattr(BaseTuner, "disable_adapter_layers", off)
    monkeypatch.setattr(PeftModel, "disable_adapter", ctx)
    engine = Engine(spiky(tok), tok, batch_wait_ms=0).start()
    engine.add_adapter("good", adapter)
    try:
        for adapter_name, ids in (("good", prompts[1]), (None, prompts[0]), ("good", prompts[1]), (None, prompts[0])):
            engine.complete(GenRequest(ids, 20, adapter=adapter_name))
        assert switches["context"] == 0
        # 4 batches alternating adapter/base: at most one switch per change (a few), never one per token (80).
        assert 0 < switches["on"] + switches["off"] <= 4
    finally:
        engine.stop()
    # exact answers through the switches
    engine = Engine(spiky(tok), tok, batch_wait_ms=0).start()
    engine.add_adapter("good", adapter)
    try:
        for adapter_name, ids, want in (("good", prompts[1], want_ad), (None, prompts[0], want_base),
                                        ("good", prompts[1], want_ad), (None, prompts[0], want_base)):
            req = GenRequest(ids, 20, adapter=adapter_name)
            engine.complete(req)
            assert req.ids == want
    finally:
        engine.stop()


def test_a_prefill_hands_the_lm_head_one_densely_laid_out_column_per_row(tok, tmp_path: Path):
    """Only the last column's logits are computed; the engine asks for it by index, so the LM head gets a fresh
    [rows, 1, hidden] tensor instead of a view that keeps the prompt's row stride (`logits_to_keep=1`). On CPU a bf16
    head whose weight does not require grad (PEFT freezes the base once an adapter is loaded) multiplies such a view
    through a slow path: 1.2 s instead of 8 ms for an 8-row prefill of SmolLM2-135M. Answers stay exact."""
    adapter = make_adapter(tmp_path / "good", 11)
    prompts = [ids_of(tok, t) for t in TEXTS[:3]]
    want = [reference(spiky(tok), tok, p, 12) for p in prompts]
    model = spiky(tok)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    model.get_output_embeddings().register_forward_pre_hook(
        lambda mod, args: seen.append((tuple(args[0].shape), tuple(args[0].stride()))))
    engine = Engine(model, tok)
    engine.add_adapter("good", adapter)
    engine._run([GenRequest(prompts[0], 4, adapter="good")])  # the adapter loads: the base's weights are frozen
    assert not engine.model.get_output_embeddings().weight.requires_grad
    seen.clear()
    reqs = [GenRequest(p, 12) for p in prompts]  # one left-padded prefill of three rows, then decoding steps
    engine._run(reqs)
    assert [r.ids for r in reqs] == want
    assert seen and all(shape[1] == 1 for shape, _ in seen)
    assert all(stride == (shape[2], shape[2], 1) for shape, stride in seen), seen[0]


def test_base_rows_skip_peft_wrappers_once_adapters_are_loaded(tok, tmp_path: Path, monkeypatch):
    """A batch without adapters runs the base's own modules (plain_base: the same weights, PEFT's wrappers taken out),
    not the PeftModel with its adapter layers disabled, whose wrapped Linears each pass through PEFT's Python forward.
    Adapter and mixed batches still go through PEFT for their prefill (their decoding steps add the LoRA rows in the
    lean step, test_lean.py); the plain view follows adapters that load later."""
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear

    from llmtailor.serve.engine import plain_base

    good, other = make_adapter(tmp_path / "good", 11), make_adapter(tmp_path / "other", 12)
    prompts = [ids_of(tok, t) for t in TEXTS[:2]]
    want_base = reference(spiky(tok), tok, prompts[0], 16)
    want_ad = reference(PeftModel.from_pretrained(spiky(tok), good).eval(), tok, prompts[1], 16)
    calls = {"n": 0}
    real = LoraLinear.forward

    def counted(self, *a, **kw):
        calls["n"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(LoraLinear, "forward", counted)
    engine = Engine(spiky(tok), tok)
    engine.add_adapter("good", good)
    engine.add_adapter("other", other)
    ad = GenRequest(prompts[1], 16, adapter="good")
    engine._run([ad])
    assert ad.ids == want_ad and calls["n"] > 0
    calls["n"] = 0
    base = GenRequest(prompts[0], 16)
    engine._run([base])
    assert base.ids == want_base and calls["n"] == 0
    plain = engine._plain
    assert {id(p) for p in plain.parameters()} == {id(p) for n, p in engine.model.get_base_model().named_parameters()
                                                   if "lora_" not in n}
    assert not any(isinstance(m, LoraLinear) for m in plain.modules())
    assert any(isinstance(m, LoraLinear) for m in engine.model.modules())  # the PeftModel itself is untouched
    mixed = [GenRequest(prompts[0], 16), GenRequest(prompts[1], 16, adapter="good"),
             GenRequest(prompts[0], 16, adapter="other")]
    engine._run(mixed)
    assert [mixed[0].ids, mixed[1].ids] == [want_base, want_ad] and calls["n"] > 0
    assert engine._plain is not plain  # "other" loaded (more wrapped layers): the view was rebuilt
    again = GenRequest(prompts[0], 16)
    engine._run([again])
    assert again.ids == want_base

    engine.model.base_model.merge_adapter(["good"])  # merged into the base weights: the wrapped Linear is not the base
    assert plain_base(engine.model) is None
