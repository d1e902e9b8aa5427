"""Padding-free batches: one row per batch, examples kept apart by the attention, same loss as padded batches."""

from __future__ import annotations

import json

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from llmtailor import precision as prec
from llmtailor.io import write_jsonl
from llmtailor.runs import read_run
from llmtailor.train import attention
from llmtailor.train.attention import NAME, cpu_attention, use_cpu_attention
from llmtailor.train.loss import label_only_loss
from llmtailor.train.packing import isolates_packed_rows
from llmtailor.train.sft import train
from tests.conftest import build_tiny_model
from tests.unit.test_train import dataset, losses, make_cfg, rows  # noqa: F401  (fixture reused)


class _Layer(torch.nn.Module):
    pass


def _block_mask(lengths: list[int]) -> torch.Tensor:
    n = sum(lengths)
    mask = torch.zeros(1, 1, n, n, dtype=torch.bool)
    at = 0
    for length in lengths:
        mask[..., at:at + length, at:at + length] = torch.ones(length, length).tril().bool()
        at += length
    return mask


def test_segments_equal_the_block_diagonal_mask_forward_and_backward():
    gen = torch.Generator().manual_seed(1)
    lengths = [4, 1, 7, 5]
    q, k, v = (torch.randn(1, n, 17, 8, generator=gen, dtype=torch.float64, requires_grad=True) for n in (6, 2, 2))
    cu = torch.tensor([0, 4, 5, 12, 17], dtype=torch.int32)
    out, _ = cpu_attention(_Layer(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    ref, _ = cpu_attention(_Layer(), q, k, v, _block_mask(lengths))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)  # the softmax runs in fp32, as eager
    grad = torch.randn_like(out)
    for mine, theirs in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad),
                            strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)  # the softmax runs in fp32, as eager
    # The test can fail: one causal attention over the whole row is not the same thing.
    whole, _ = cpu_attention(_Layer(), q, k, v, None)
    assert not torch.allclose(whole, ref)


def test_boundaries_that_do_not_fit_the_row_are_refused():
    q, k, v = (torch.randn(1, n, 9, 8) for n in (6, 2, 2))
    with pytest.raises(ValueError, match="cu_seq_lens"):
        cpu_attention(_Layer(), q, k, v, None, cu_seq_lens_q=torch.tensor([0, 4, 12]))
    with pytest.raises(ValueError, match="cu_seq_lens"):
        cpu_attention(_Layer(), q, k, v, None, cu_seq_lens_q=torch.tensor([0, 6, 4, 9]))


def test_flattened_batch_has_the_padded_batch_loss_and_gradients(tiny_tokenizer):
    """TRL's own padding-free collator against its padded one, on the same two rows, in fp32: equal to 1e-5."""
    gen = torch.Generator().manual_seed(5)
    rows = []
    for n, prompt in ((11, 6), (7, 3)):
        ids = torch.randint(3, len(tiny_tokenizer), (n,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    padded = DataCollatorForLanguageModeling(pad_token_id=0, return_tensors="pt")([dict(r) for r in rows])
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, return_tensors="pt")(
        [dict(r) for r in rows])
    assert flat["input_ids"].shape == (1, 18) and "cu_seq_lens_q" in flat and "attention_mask" not in flat
    results = []
    for inputs in (padded, flat):
        model = build_tiny_model(tiny_tokenizer, seed=7)
        assert use_cpu_attention(model)
        loss = label_only_loss(model, inputs).loss
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_probe_takes_the_varlen_path_and_sees_it_broken(tiny_tokenizer, monkeypatch):
    model = build_tiny_model(tiny_tokenizer)
    use_cpu_attention(model)
    import transformers.masking_utils as mu

    # The mask alone broken: the varlen path, which training takes, still keeps the rows apart.
    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    assert isolates_packed_rows(model)
    monkeypatch.setattr(attention, "_segments", lambda kwargs, q, k: None)  # and now that path too
    assert not isolates_packed_rows(model)


@pytest.fixture()
def uneven(tmp_path):
    """Rows of different lengths, so that a padded batch has padding."""
    out = []
    for i, row in enumerate(rows(16)):
        row["messages"][1]["content"] += " please" * (i % 5) * 3
        row["messages"][2]["content"] = json.dumps({"category": "billing", "note": "x " * (i % 3)})
        out.append(row)
    write_jsonl(tmp_path / "uneven" / "train.jsonl", out)
    write_jsonl(tmp_path / "uneven" / "eval.jsonl", out[:4])
    return tmp_path / "uneven"


def test_training_under_bf16_is_padding_free_and_records_it(tmp_path, tiny_model_dir, uneven, monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda *a, **k: ["avx512_bf16"])  # also on CPUs without it
    free = read_run(train(make_cfg(tmp_path / "a", tiny_model_dir, precision="bf16", max_steps=3), uneven, "h",
                          show_progress=False).run_dir)
    assert free["attention"] == NAME and free["padding_free"] is True
    assert "padding-free" in free["batching"] and free["padding_share"] == 0.0
    cfg = make_cfg(tmp_path / "b", tiny_model_dir, precision="bf16", max_steps=3, padding_free=False)
    padded = read_run(train(cfg, uneven, "h", show_progress=False).run_dir)
    assert padded["padding_free"] is False and padded["padding_share"] > 0.05
    # Same examples in the same order: the losses follow each other (bf16 sums differ in their last bits).
    a = losses(tmp_path / "a" / "runs" / free["run_id"])
    b = losses(tmp_path / "b" / "runs" / padded["run_id"])
    assert a.keys() == b.keys() and all(a[s] == pytest.approx(b[s], rel=0.02) for s in a)


def test_auto_stays_padded_without_varlen_attention_and_true_says_why(tmp_path, tiny_model_dir, dataset,  # noqa: F811
                                                                      monkeypatch):
    info = read_run(train(make_cfg(tmp_path / "a", tiny_model_dir, precision="fp32", max_steps=1), dataset, "h",
                          show_progress=False).run_dir)
    assert info["padding_free"] is False and "sdpa" in info["padding_free_reason"]
    # Asked for explicitly: sdpa keeps the examples apart through its whole-row mask, so it is honoured.
    cfg = make_cfg(tmp_path / "b", tiny_model_dir, precision="fp32", max_steps=1, padding_free=True)
    info = read_run(train(cfg, dataset, "h", show_progress=False).run_dir)
    assert info["padding_free"] is True and info["padding_share"] == 0.0
    # ... unless the probe sees the examples attend to each other: padded batches, and the user is told.
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    said: list[str] = []
    cfg = make_cfg(tmp_path / "c", tiny_model_dir, precision="fp32", max_steps=1, padding_free=True)
    info = read_run(train(cfg, dataset, "h", show_progress=False, say=said.append).run_dir)
    assert info["padding_free"] is False and "attend to each other" in info["padding_free_reason"]
    assert any("padding-free batches asked for" in s for s in said)
