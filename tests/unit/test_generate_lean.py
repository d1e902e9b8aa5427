"""Shared greedy generation (llmtailor/generate.py) through the lean decoding step gives exactly what
`model.generate` gives: the plain model, a PeftModel with its adapter active, the same inside `disable_adapter()`;
and it steps aside (model.generate answers) where the lean step does not apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtailor.generate import generate_detailed, lean_plan
from tests.unit.serve.test_engine import spiky
from tests.unit.serve.test_lean import ALL, _adapter

CONVS = [[{"role": "user", "content": t}] for t in
         ["The customer cannot log in", "refund my invoice please", "hello world 42", "a much longer message " * 6]]


@pytest.fixture(scope="module")
def tok():
    from tests.conftest import build_tiny_tokenizer

    return build_tiny_tokenizer()


def _both(model, tok, steps, **kw) -> list:
    steps.clear()
    want = generate_detailed(model, tok, CONVS, max_new_tokens=20, batch_size=3, lean=False, **kw)
    assert steps == []
    got = generate_detailed(model, tok, CONVS, max_new_tokens=20, batch_size=3, **kw)
    assert [(g.text, g.hit_limit) for g in got] == [(w.text, w.hit_limit) for w in want]
    return got


def test_plain_model_answers_as_generate_does(tok, lean_steps):
    got = _both(spiky(tok), tok, lean_steps)
    assert lean_steps and len({g.text for g in got}) == len(CONVS)


def test_an_early_end_of_turn_pads_the_row_as_generate_does(tok, lean_steps):
    """Rows that end early get padding while the others go on, and generation stops once all have ended."""
    import torch

    from llmtailor.chat import render_prompt

    model = spiky(tok)
    ids = torch.tensor([tok(render_prompt(tok, CONVS[0]), add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    x = int(out[0, ids.shape[1] + 5])  # the first row's sixth token: from now on the end-of-turn beats it
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied from the embeddings
        model.lm_head.weight[tok.eos_token_id] = 1.05 * model.lm_head.weight[x]
    got = _both(model, tok, lean_steps)
    assert not got[0].hit_limit and any(g.hit_limit for g in got)  # ended at the sixth token, others ran on


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_a_lora_adapter_and_the_base_inside_disable_adapter(tok, lean_steps, tmp_path: Path):
    from peft import PeftModel

    model = PeftModel.from_pretrained(spiky(tok), _adapter(tmp_path / "b", 2, ALL, 8)).eval()
    tuned = _both(model, tok, lean_steps)
    assert lean_steps
    with model.disable_adapter():
        base = _both(model, tok, lean_steps)
        assert lean_steps
    assert [g.text for g in tuned] != [g.text for g in base]
    assert [g.text for g in base] == [g.text for g in generate_detailed(spiky(tok), tok, CONVS, max_new_tokens=20,
                                                                         batch_size=3, lean=False)]


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_where_the_lean_step_does_not_apply_generate_answers(tok, lean_steps, tmp_path: Path):
    from peft import PeftModel

    from tests.unit.serve.test_engine import sliding

    dora = PeftModel.from_pretrained(spiky(tok), _adapter(tmp_path / "d", 3, ["q_proj"], 4, use_dora=True)).eval()
    penalised = spiky(tok)
    penalised.generation_config.repetition_penalty = 1.3
    for model in (sliding(tok), dora, penalised):
        assert lean_plan(model) is None
        lean_steps.clear()
        generate_detailed(model, tok, CONVS[:2], max_new_tokens=5)
        assert lean_steps == []
