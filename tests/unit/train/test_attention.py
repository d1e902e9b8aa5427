"""llmtailor's CPU training attention: same numbers as sdpa, fused-kernel memory, wired into training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmtailor import precision as prec
from llmtailor.runs import read_run
from llmtailor.train.attention import NAME, cpu_attention, use_cpu_attention
from llmtailor.train.loss import _fp32_weight, label_only_loss
from llmtailor.train.packing import isolates_packed_rows
from llmtailor.train.sft import train
from tests.conftest import build_tiny_model
from tests.unit.test_train import dataset, make_cfg  # noqa: F401  (fixture reused)


class _Layer(torch.nn.Module):
    pass


def _qkv(dtype=torch.float64, b=2, h=6, kv=2, s=9, d=8):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(b, n, s, d, generator=gen, dtype=dtype, requires_grad=True) for n in (h, kv, kv)]


def _reference(q, k, v, mask=None):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    return out.transpose(1, 2)


@pytest.mark.parametrize("masked", [False, True])
def test_matches_sdpa_forward_and_backward_with_grouped_heads(masked):
    q, k, v = _qkv()
    mask = None
    if masked:  # two packed rows of 4 and 5 tokens: block-diagonal causal, as transformers builds for packing
        mask = torch.zeros(2, 1, 9, 9, dtype=torch.bool)
        mask[..., :4, :4] = torch.ones(4, 4).tril().bool()
        mask[..., 4:, 4:] = torch.ones(5, 5).tril().bool()
    out, weights = cpu_attention(_Layer(), q, k, v, mask)
    ref = _reference(q, k, v, mask)
    assert weights is None and out.shape == ref.shape == (2, 9, 6, 8)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    grad = torch.randn_like(out)
    for mine, theirs in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad),
                            strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


def test_keeps_no_seq_by_seq_tensor_for_backward():
    """The point of the custom backward: eager attention keeps batch x heads x seq x seq probabilities per layer."""
    q, k, v = _qkv(torch.float32, b=2, h=6, kv=2, s=64, d=8)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = cpu_attention(_Layer(), q, k, v, None)
    probs = 2 * 6 * 64 * 64
    assert out.requires_grad and saved
    assert max(saved) < probs  # q, k, v and a (1, 1, G*S, S) causal bias; never the per-row probabilities
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # the test can fail: eager-style keeps them
        torch.softmax(q @ k.repeat_interleave(3, 1).transpose(-1, -2), -1) @ v.repeat_interleave(3, 1)
    assert max(saved) >= probs


def test_model_with_it_matches_sdpa_in_fp32_and_tracks_under_bf16(tiny_tokenizer):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 12), generator=gen)
    labels = ids.clone()
    labels[:, :5] = -100
    inputs = {"input_ids": ids, "labels": labels}
    sdpa = build_tiny_model(tiny_tokenizer, seed=4)
    mine = build_tiny_model(tiny_tokenizer, seed=4)
    assert use_cpu_attention(mine) and mine.config._attn_implementation == NAME
    ref_loss = label_only_loss(sdpa, inputs).loss
    loss = label_only_loss(mine, inputs).loss
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    ref_loss.backward()
    loss.backward()
    for (name, a), b in zip(sdpa.named_parameters(), mine.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    bf16 = label_only_loss(mine, inputs, autocast_bf16=True).loss.item()
    assert bf16 == pytest.approx(ref_loss.item(), rel=0.02)


def test_packed_rows_stay_apart_with_it(tiny_tokenizer, monkeypatch):
    from llmtailor.train import attention

    model = build_tiny_model(tiny_tokenizer)
    use_cpu_attention(model)
    # The mask path (the varlen path, which reads cu_seq_lens, has its own test in test_padding_free.py).
    monkeypatch.setattr(attention, "_segments", lambda kwargs, q, k: None)
    assert isolates_packed_rows(model)
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    assert not isolates_packed_rows(model)


def test_training_records_the_attention_it_used(tmp_path, tiny_model_dir, dataset, monkeypatch):  # noqa: F811
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda *a, **k: ["avx512_bf16"])  # also on CPUs without it
    cfg = make_cfg(tmp_path / "a", tiny_model_dir, precision="bf16", max_steps=1)
    assert read_run(train(cfg, dataset, "h", show_progress=False).run_dir)["attention"] == NAME
    cfg = make_cfg(tmp_path / "b", tiny_model_dir, precision="bf16", max_steps=1)
    cfg.train.attention = "model"
    assert read_run(train(cfg, dataset, "h", show_progress=False).run_dir)["attention"] == "sdpa"
    cfg = make_cfg(tmp_path / "c", tiny_model_dir, precision="fp32", max_steps=1)  # fp32: the model's own
    assert read_run(train(cfg, dataset, "h", show_progress=False).run_dir)["attention"] == "sdpa"


def test_frozen_bf16_head_is_converted_once_and_refreshed_when_changed():
    weight = torch.nn.Parameter(torch.randn(50, 8).to(torch.bfloat16), requires_grad=False)
    first = _fp32_weight(weight)
    assert first.dtype == torch.float32 and _fp32_weight(weight) is first
    with torch.no_grad():
        weight.add_(1.0)  # an in-place change bumps the version: the copy must follow
    second = _fp32_weight(weight)
    assert second is not first
    torch.testing.assert_close(second, weight.float())
    trainable = torch.nn.Parameter(torch.randn(50, 8).to(torch.bfloat16))
    assert _fp32_weight(trainable).requires_grad  # a trained head is never served from a stale copy
