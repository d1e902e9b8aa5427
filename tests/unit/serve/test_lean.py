"""The lean decoding step (serve/lean.py) computes what transformers' forward computes: the same logits for a
left-padded batch with grouped-query attention and without, in fp32 and bf16, the same keys and values appended to
the cache; the engine uses it for plain Llama models only, and greedy answers do not change with it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from llmtailor.serve.engine import Engine, GenRequest
from llmtailor.serve.lean import LeanDecoder, supported_cache, unsupported
from tests.unit.serve.conftest import make_adapter
from tests.unit.serve.test_engine import TEXTS, ids_of, reference, sliding, spiky


def _llama(tok, kv_heads: int, dtype=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.unit.serve.test_engine import scale_up

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = scale_up(LlamaForCausalLM(cfg))
    return model.to(dtype) if dtype is not None else model


def _left_padded(tok, rows: list[list[int]]) -> tuple:
    """Input ids, attention mask and position ids of `rows`, left-padded to the longest (as the engine lays them)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


@pytest.fixture(scope="module")
def tok():
    from tests.conftest import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_steps_equal_transformers_steps_on_a_left_padded_batch(tok, kv_heads, dtype):
    import torch
    from transformers import DynamicCache

    model = _llama(tok, kv_heads, getattr(torch, dtype))
    rows = [ids_of(tok, t) for t in TEXTS[:3]]
    ids, mask, pos = _left_padded(tok, rows)
    lean = LeanDecoder(model)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        twin = copy.deepcopy(cache)
        nxt, nxt_lean = out.logits[:, -1].argmax(-1), out.logits[:, -1].argmax(-1)
        p = pos[:, -1] + 1
        assert supported_cache(cache)
        for _ in range(6):
            mask = torch.cat([mask, mask.new_ones((3, 1))], dim=1)
            want = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=p[:, None], cache=cache,
                         use_cache=True).logits[:, -1]
            got = lean.step(nxt_lean[:, None], mask, p[:, None], twin)
            if dtype == "float32":
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            else:  # bf16: the same operations in the same order; allow one rounding step of the logits
                torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.02)
            nxt, nxt_lean, p = want.argmax(-1), got.argmax(-1), p + 1
            assert torch.equal(nxt, nxt_lean)
        for a, b in zip(cache.layers, twin.layers, strict=True):
            assert a.keys.shape == b.keys.shape and a.values.shape == b.values.shape
            torch.testing.assert_close(b.keys.float(), a.keys.float(), atol=1e-2, rtol=1e-2)
            torch.testing.assert_close(b.values.float(), a.values.float(), atol=1e-2, rtol=1e-2)


def test_only_plain_llama_models_on_cpu_are_eligible(tok, tmp_path: Path):
    from peft import PeftModel

    assert unsupported(spiky(tok)) is None
    assert "Qwen2ForCausalLM" in unsupported(sliding(tok))
    wrapped = PeftModel.from_pretrained(spiky(tok), make_adapter(tmp_path / "a", 5))
    assert unsupported(wrapped) is not None
    assert "wrapped" in unsupported(wrapped.get_base_model())  # LoRA layers inside: PEFT's forward must run
    biased = _llama(tok, 2)
    biased.config.attention_bias = True
    assert "bias" in unsupported(biased)
    with pytest.raises(ValueError, match="not supported"):
        LeanDecoder(sliding(tok))


def test_the_engine_decodes_base_batches_through_the_lean_step_with_the_same_answers(tok, tmp_path: Path,
                                                                                     lean_steps):
    prompts = [ids_of(tok, t) for t in TEXTS]
    want = [reference(spiky(tok), tok, p, 24) for p in prompts]
    for lean in (True, False):
        lean_steps.clear()
        engine = Engine(spiky(tok), tok, lean_decode=lean)
        reqs = [GenRequest(p, 24) for p in prompts]
        engine._run(reqs)
        assert [r.ids for r in reqs] == want
        assert bool(lean_steps) is lean
    # with an adapter loaded, base batches go through the plain view and adapter batches add the LoRA rows; with
    # the lean step off, the same answers through PEFT
    for lean in (True, False):
        engine = Engine(spiky(tok), tok, lean_decode=lean)
        engine.add_adapter("a", make_adapter(tmp_path / "a", 7))
        lean_steps.clear()
        ad = GenRequest(prompts[0], 24, adapter="a")
        engine._run([ad])
        assert bool(lean_steps) is lean
        base = GenRequest(prompts[0], 24)
        engine._run([base])
        assert base.ids == want[0]
        if lean:
            lean_ad = ad.ids
    assert ad.ids == lean_ad


def _adapter(folder: Path, seed: int, targets: list[str], r: int, **extra) -> Path:
    """make_adapter with alpha = 2 x rank."""
    return make_adapter(folder, seed, targets, r, lora_alpha=2 * r, **extra)


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_mixed_lora_rows_in_the_lean_step_equal_peft_mixed_batch_logits(tok, tmp_path: Path):
    """Three adapters of different ranks and targets and a base row in one batch: the lean step's logits equal
    PEFT's mixed-batch forward (adapter_names) in float32, step after step."""
    import torch
    from peft import PeftModel
    from transformers import DynamicCache

    from llmtailor.serve.batching import plain_base
    from llmtailor.serve.lean_lora import LoraBatch, table

    paths = {"a": _adapter(tmp_path / "a", 1, ["q_proj", "v_proj"], 4), "b": _adapter(tmp_path / "b", 2, ALL, 8),
             "c": _adapter(tmp_path / "c", 3, ["k_proj", "o_proj", "down_proj"], 2)}
    model = PeftModel.from_pretrained(spiky(tok), paths["a"], adapter_name="a")
    for n in ("b", "c"):
        model.load_adapter(paths[n], adapter_name=n)
    model.eval()
    names = ["b", None, "a", "c", "b"]
    rows = [ids_of(tok, TEXTS[i % 4]) for i in range(5)]
    ids, mask, pos = _left_padded(tok, rows)
    adapter_names = [n if n is not None else "__base__" for n in names]
    lean = LeanDecoder(plain_base(model))
    tables = {n: table(model, n, lean.group_sizes, len(lean.layers)) for n in paths}
    assert all(isinstance(t, list) for t in tables.values())
    batch = LoraBatch(sorted(paths) + [None], tables, len(lean.layers)).for_rows(names)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                    adapter_names=adapter_names)
        twin = copy.deepcopy(cache)
        nxt, p = out.logits[:, -1].argmax(-1), pos[:, -1] + 1
        for _ in range(5):
            mask = torch.cat([mask, mask.new_ones((5, 1))], dim=1)
            want = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=p[:, None], cache=cache,
                         use_cache=True, adapter_names=adapter_names).logits[:, -1]
            got = lean.step(nxt[:, None], mask, p[:, None], twin, batch)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
            nxt, p = want.argmax(-1), p + 1
        plain = lean.step(nxt[:, None], torch.cat([mask, mask.new_ones((5, 1))], dim=1), p[:, None], twin)
        assert not torch.allclose(plain, got)  # the adapters do change the answer


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_the_engine_serves_lora_rows_through_the_lean_step_and_peft_only_what_it_cannot(tok, tmp_path: Path,
                                                                                      lean_steps):
    from peft import PeftModel

    paths = {"a": _adapter(tmp_path / "a", 1, ["q_proj", "v_proj"], 4), "b": _adapter(tmp_path / "b", 2, ALL, 8),
             "saved": _adapter(tmp_path / "s", 4, ["q_proj"], 4, modules_to_save=["lm_head"])}
    prompt = ids_of(tok, TEXTS[0])
    want = {n: reference(PeftModel.from_pretrained(spiky(tok), p).eval(), tok, prompt, 16) for n, p in paths.items()}
    want[None] = reference(spiky(tok), tok, prompt, 16)
    assert len({tuple(w) for w in want.values()}) == 4
    engine = Engine(spiky(tok), tok)
    for n, p in paths.items():
        engine.add_adapter(n, p)
    reqs = [GenRequest(prompt, 16, adapter=n) for n in ("a", None, "b", "a")]
    engine._run(reqs)
    assert [r.ids for r in reqs] == [want[r.adapter] for r in reqs]
    assert lean_steps and all(lo is not None and lo.slots == ["a", "b", None] for lo in lean_steps)
    lean_steps.clear()
    solo = GenRequest(prompt, 16, adapter="saved")  # modules_to_save: PEFT's forward, the right answer all the same
    engine._run([solo])
    assert solo.ids == want["saved"] and lean_steps == []
    assert "modules" in engine._lora_tables["saved"]
