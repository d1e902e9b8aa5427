"""DoRA adapters are served from a merged copy of the base: greedy answers equal PEFT's unmerged DoRA model, the
serving PeftModel never holds the DoRA weights, and batches that mix base, LoRA and DoRA requests answer each
request exactly as it is answered alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llmtailor.serve.engine import GenRequest
from tests.conftest import build_tiny_model, build_tiny_tokenizer
from tests.unit.serve.conftest import build_engine, make_adapter

PROMPTS = ["The customer cannot log in", "refund my invoice please", "hello world 42"]
TOKENS = 10


def make_dora_adapter(folder: Path, seed: int) -> Path:
    """A DoRA adapter with large random A/B (so it changes answers) and magnitudes that no longer match them."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(build_tiny_tokenizer())
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"], use_dora=True,
                     init_lora_weights=False)
    pm = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.mul_(8)
    pm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dora")
    return {"dora": make_dora_adapter(root / "dora", 21), "dora2": make_dora_adapter(root / "dora2", 22),
            "lora": make_adapter(root / "lora", 23)}


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    tok = build_tiny_tokenizer()
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def reference(adapter: Path | None, ids: list[int]) -> str:
    """Greedy answer of a fresh base (+ the adapter through PEFT, unmerged), decoded as the engine decodes."""
    import torch
    from peft import PeftModel

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=TOKENS, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[0, len(ids):].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


def _together(engine, jobs: list[tuple[str | None, list[int]]]) -> list[str]:
    """Submit all jobs at once (one burst for the batcher) and collect the answers in order."""
    out = [""] * len(jobs)

    def go(i: int) -> None:
        adapter, ids = jobs[i]
        out[i] = engine.complete(GenRequest(ids, TOKENS, adapter=adapter), timeout=120)[0]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_dora_is_served_merged_and_answers_like_peft(adapters, prompts):
    from peft import PeftModel

    engine = build_engine(batch_wait_ms=5).start()
    try:
        engine.add_adapter("dora", adapters["dora"])
        for ids in prompts:
            want = reference(adapters["dora"], ids)
            assert want != reference(None, ids)  # the adapter really changes the answer
            assert engine.complete(GenRequest(ids, TOKENS, adapter="dora"), timeout=120)[0] == want
        assert engine.merged_adapters == ["dora"] and engine.loaded_adapters == ["dora"]
        merged = engine._merged["dora"]
        assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain model: weights merged in
        assert not isinstance(engine.model, PeftModel) and merged is not engine.model  # the base stays untouched
        assert engine.complete(GenRequest(prompts[0], TOKENS), timeout=120)[0] == reference(None, prompts[0])
    finally:
        engine.stop()


def test_mixed_burst_of_base_lora_and_dora_answers_each_as_alone(adapters, prompts):
    engine = build_engine(batch_wait_ms=60, max_batch_size=16).start()
    try:
        for name in ("dora", "dora2", "lora"):
            engine.add_adapter(name, adapters[name])
        jobs = [(a, ids) for ids in prompts for a in (None, "lora", "dora", "dora2")]
        alone = [engine.complete(GenRequest(ids, TOKENS, adapter=a), timeout=120)[0] for a, ids in jobs]
        assert alone == [reference(adapters[a] if a else None, ids) for a, ids in jobs]
        before = engine.batches_run
        assert _together(engine, jobs) == alone
        # base+LoRA share batches; each DoRA adapter runs on its own merged copy, in batches of its own.
        assert engine.batches_run - before >= 3
        assert sorted(engine.merged_adapters) == ["dora", "dora2"]
        assert set(engine.model.peft_config) == {"lora"}  # DoRA weights never enter the serving PeftModel
    finally:
        engine.stop()


def test_a_batch_that_mixes_dora_with_others_is_split_into_sub_batches(adapters, prompts):
    """The worker itself splits a batch the batcher did not separate (called directly, no worker thread)."""
    engine = build_engine()
    for name in ("dora", "lora"):
        engine.add_adapter(name, adapters[name])
    events: dict[int, list] = {}
    batch = []
    for i, (a, ids) in enumerate((a, ids) for ids in prompts[:2] for a in ("dora", None, "lora")):
        events[i] = []
        batch.append(GenRequest(ids, TOKENS, adapter=a, emit=events[i].append))
    engine._run(batch)
    for i, r in enumerate(batch):
        assert events[i][-1].kind == "done", events[i][-1].error
        got = "".join(ev.text for ev in events[i] if ev.kind == "delta")
        assert got == reference(adapters[r.adapter] if r.adapter else None, r.prompt_ids)
    assert engine.batches_run == 2  # one merged-DoRA sub-batch, one mixed base+LoRA sub-batch


def test_merged_copies_count_against_the_lru_budget(adapters, prompts):
    engine = build_engine(max_loaded_adapters=2, batch_wait_ms=2).start()
    try:
        for name in ("dora", "dora2", "lora"):
            engine.add_adapter(name, adapters[name])
        want = engine.complete(GenRequest(prompts[0], TOKENS, adapter="dora"), timeout=120)[0]
        for name in ("lora", "dora2"):
            engine.complete(GenRequest(prompts[0], TOKENS, adapter=name), timeout=120)
        assert engine.loaded_adapters == ["lora", "dora2"] and engine.merged_adapters == ["dora2"]  # dora evicted
        assert engine.complete(GenRequest(prompts[0], TOKENS, adapter="dora"), timeout=120)[0] == want
        assert engine.loaded_adapters == ["dora2", "dora"] and engine.adapter_loads == 4
        assert "lora" not in engine.model.peft_config
    finally:
        engine.stop()


def test_unmerged_mode_still_serves_dora_through_peft(adapters, prompts):
    engine = build_engine(merge_dora=False).start()
    try:
        engine.add_adapter("dora", adapters["dora"])
        got = engine.complete(GenRequest(prompts[1], TOKENS, adapter="dora"), timeout=120)[0]
        assert got == reference(adapters["dora"], prompts[1])
        assert engine.merged_adapters == [] and "dora" in engine.model.peft_config
    finally:
        engine.stop()
