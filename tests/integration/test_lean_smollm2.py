"""Integration: the lean decoding step on the packaged SmolLM2 (bf16 where the CPU computes it natively, as served)
gives the transformers engine the same greedy answers as transformers' own forward, for one stream and for a
left-padded batch of three."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "A customer cannot log in after resetting the password. Which team should handle the ticket?"]


def test_lean_and_transformers_steps_give_the_same_answers(lean_steps):
    from llmtailor.chat import prompt_ids
    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model
    from llmtailor.serve.engine import Engine, GenRequest

    model, tok = load_model(ModelConfig())
    ids = [prompt_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    answers = {}
    for lean in (False, True):
        engine = Engine(model, tok, lean_decode=lean, prefix_cache_size=0)
        one = GenRequest(ids[0], 24)
        engine._run([one])
        batch = [GenRequest(x, 24) for x in ids]
        engine._run(batch)
        answers[lean] = [one.ids] + [r.ids for r in batch]
    assert lean_steps
    assert answers[True] == answers[False]
    assert "Paris" in tok.decode(answers[True][0])


def test_lora_rows_in_the_lean_step_answer_as_peft_does(tmp_path, lean_steps):
    """A LoRA adapter on every projection of SmolLM2 (random, non-zero), served on the bf16 base: the lean step gives
    the answers PEFT's forward gives, alone and in a batch of adapter rows. In a batch mixing base and adapter rows,
    PEFT rounds each adapter's product to bf16 before adding it (its mixed-batch path) while the lean step adds in
    float32 and rounds once (PEFT's single-adapter path), so late tokens may part; base rows stay exact."""
    import torch
    from peft import LoraConfig, get_peft_model

    from llmtailor.chat import prompt_ids
    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model
    from llmtailor.serve.engine import Engine, GenRequest

    model, tok = load_model(ModelConfig(), dtype=torch.float32)
    torch.manual_seed(0)
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    pm.save_pretrained(tmp_path / "ad")
    ids = [prompt_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    got: dict[bool, dict[str, list]] = {}
    for lean in (False, True):
        engine = Engine(load_model(ModelConfig())[0], tok, lean_decode=lean, prefix_cache_size=0)
        engine.add_adapter("ad", tmp_path / "ad")
        runs = {"alone": [GenRequest(ids[0], 24, adapter="ad")],
                "adapter rows": [GenRequest(ids[1], 24, adapter="ad"), GenRequest(ids[2], 24, adapter="ad")],
                "mixed": [GenRequest(ids[1], 24, adapter="ad"), GenRequest(ids[1], 24)]}
        for reqs in runs.values():
            engine._run(reqs)
        got[lean] = {k: [r.ids for r in reqs] for k, reqs in runs.items()}
    assert any(lo is not None for lo in lean_steps)
    assert got[True]["alone"] == got[False]["alone"]
    assert got[True]["adapter rows"] == got[False]["adapter rows"]
    (ad_lean, base_lean), (ad_peft, base_peft) = got[True]["mixed"], got[False]["mixed"]
    assert base_lean == base_peft
    assert ad_lean[:8] == ad_peft[:8] and ad_lean != base_lean  # the adapter's answer to the same prompt
