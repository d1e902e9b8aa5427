"""The one renderer: training prompts equal generation prompts, and the loss mask covers only answers."""

from llmtailor.chat import prompt_ids, render_conversation, render_prompt, tokenize_for_training

CONV = [
    {"role": "system", "content": "Answer with JSON."},
    {"role": "user", "content": "My invoice is wrong."},
    {"role": "assistant", "content": '{"category": "billing"}'},
    {"role": "user", "content": "And the priority?"},
    {"role": "assistant", "content": '{"priority": "high"}'},
]


def test_training_prompt_equals_generation_prompt(tiny_tokenizer):
    enc = tokenize_for_training(tiny_tokenizer, CONV)
    gen = prompt_ids(tiny_tokenizer, CONV[:-1])
    # The tokens before the final answer in the training sequence are exactly the generation prompt.
    assert enc["input_ids"][: len(gen)] == gen
    assert render_conversation(tiny_tokenizer, CONV).startswith(render_prompt(tiny_tokenizer, CONV[:-1]))


def test_mask_covers_assistant_answers_and_end_of_turn_only(tiny_tokenizer):
    enc = tokenize_for_training(tiny_tokenizer, CONV)
    masked = [t for t, m in zip(enc["input_ids"], enc["completion_mask"], strict=True) if m]
    text = tiny_tokenizer.decode(masked)
    assert text == '{"category": "billing"}<|im_end|>{"priority": "high"}<|im_end|>'


def test_mask_all_ones_without_assistant_only(tiny_tokenizer):
    enc = tokenize_for_training(tiny_tokenizer, CONV, assistant_only=False)
    assert all(enc["completion_mask"]) and len(enc["completion_mask"]) == len(enc["input_ids"])
