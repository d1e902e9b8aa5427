"""Shared fixtures: tiny random-initialised Llama-style models and a byte-level tokenizer built in memory.

Unit tests use these (milliseconds, no files); tests marked `integration` use the packaged SmolLM2.
"""

from __future__ import annotations

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The customer cannot log in to the portal after the password reset.",
    '{"category": "billing", "priority": "high", "team": "finance", "summary": "refund"}',
    "Please classify the ticket and answer with JSON only.",
    "system user assistant hello world 0123456789",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer with ChatML special tokens and template (vocab ~ 300)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def build_tiny_model(tokenizer, seed: int = 0):
    """A 2-layer Llama with hidden size 32, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny model saved as a Hugging Face folder, for code paths that load from disk."""
    d = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(tiny_tokenizer).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture()
def lean_steps(monkeypatch):
    """Every call of the lean decoding step (serve/lean.py), recorded as the LoRA batch it was given (None: no
    adapter rows): shows which path decoded, and with which adapters."""
    from llmtailor.serve.lean import LeanDecoder

    calls: list = []
    real = LeanDecoder.step

    def recorded(self, ids, mask, positions, cache, lora=None):
        calls.append(lora)
        return real(self, ids, mask, positions, cache, lora)

    monkeypatch.setattr(LeanDecoder, "step", recorded)
    return calls
