"""The training speed paths: label-only loss equals TRL's, length buckets, the packing probe, precision choice."""

from __future__ import annotations

import pytest
import torch

from llmtailor import precision as prec
from llmtailor.errors import TailorError
from llmtailor.runs import read_run
from llmtailor.train.loss import label_only_loss
from llmtailor.train.packing import isolates_packed_rows
from llmtailor.train.sft import train
from llmtailor.train.trainer import BucketSampler, padding_share
from tests.conftest import build_tiny_model
from tests.unit.test_train import dataset, make_cfg  # noqa: F401  (fixture reused)


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    """Three rows, right-padded, prompt tokens and padding masked with -100 as TRL's collator does."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12), generator=gen)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    attn[2, 6:] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[attn == 0] = -100
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def _wrap(model, method: str):
    if method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=method == "dora", init_lora_weights=False)
    return get_peft_model(model, cfg)


@pytest.mark.parametrize("chunk", [64, 5], ids=["one-chunk", "chunks-of-5"])
@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_label_only_loss_matches_trl_and_full_logits(tiny_tokenizer, method, chunk, monkeypatch):
    """The fused head + cross-entropy equals TRL's loss and gradients whether the label rows fit one chunk or are
    split over several with a short last one (the batch has 12 label rows: chunks of 5, 5 and 2)."""
    from trl.trainer.utils import add_fused_lm_head

    import llmtailor.train.loss as loss_mod

    monkeypatch.setattr(loss_mod, "HEAD_CHUNK", chunk)

    base = build_tiny_model(tiny_tokenizer, seed=3)
    add_fused_lm_head(base)  # TRL's own SFT loss path, patched before PEFT as TRL does
    model = _wrap(base, method)
    inputs = _batch(len(tiny_tokenizer))

    trl_loss = model(**inputs, fused_lm_head=True).loss
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    full_loss = model(**inputs).loss  # transformers' loss over full logits

    ours = label_only_loss(model, inputs)
    ours.loss.backward()
    assert abs(ours.loss.item() - trl_loss.item()) < 1e-5
    assert abs(ours.loss.item() - full_loss.item()) < 1e-5
    assert ours.label_tokens == int((inputs["labels"][:, 1:] != -100).sum()) and ours.label_tokens > 2 * 5
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, trl_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_label_only_loss_divides_by_num_items_like_trl(tiny_tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    model = build_tiny_model(tiny_tokenizer, seed=4)
    add_fused_lm_head(model)
    inputs = _batch(len(tiny_tokenizer))
    ref = model(**inputs, fused_lm_head=True, num_items_in_batch=torch.tensor(50)).loss
    ours = label_only_loss(model, inputs, torch.tensor(50)).loss
    assert abs(ref.item() - ours.item()) < 1e-5


def test_bf16_label_loss_stays_close(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, seed=5)
    inputs = _batch(len(tiny_tokenizer))
    fp32 = label_only_loss(model, inputs).loss.item()
    bf16 = label_only_loss(model, inputs, autocast_bf16=True).loss.item()
    assert bf16 == pytest.approx(fp32, rel=0.02)


def test_bucket_sampler_is_a_deterministic_permutation_with_little_padding():
    lengths = [((i * 37) % 90) + 10 for i in range(101)]
    s = BucketSampler(lengths, 8, seed=7)
    first = list(s)
    assert sorted(first) == list(range(101))
    assert list(BucketSampler(lengths, 8, seed=7)) == first  # resume replays the same order
    s.set_epoch(1)
    assert list(s) != first
    batches = s.batches()
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 101 % 8  # the short batch comes last
    assert [i for b in batches for i in b] == list(s)  # the DataLoader's cuts fall on the bucket boundaries
    bucketed = padding_share(lengths, batches)
    random_batches = [list(range(i, min(i + 8, 101))) for i in range(0, 101, 8)]
    assert bucketed < 0.1 and bucketed * 3 < padding_share(lengths, random_batches)


def test_packing_probe_sees_isolation_and_its_absence(tiny_tokenizer, monkeypatch):
    model = build_tiny_model(tiny_tokenizer)
    assert isolates_packed_rows(model)
    # An attention path that ignores row boundaries (plain causal mask over the packed sequence).
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    assert not isolates_packed_rows(model)


def test_packing_trains_and_records_no_padding(tmp_path, tiny_model_dir, dataset):  # noqa: F811
    cfg = make_cfg(tmp_path, tiny_model_dir, packing=True, max_steps=2)
    info = read_run(train(cfg, dataset, "h", show_progress=False).run_dir)
    assert info["packing"] is True and info["batching"].startswith("packed")
    assert info["padding_share"] == 0.0


def test_packing_without_isolation_falls_back_to_buckets_and_says_so(tmp_path, tiny_model_dir, dataset,  # noqa: F811
                                                                     monkeypatch):
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    said: list[str] = []
    cfg = make_cfg(tmp_path, tiny_model_dir, packing=True, max_steps=2)
    info = read_run(train(cfg, dataset, "h", show_progress=False, say=said.append).run_dir)
    assert info["packing"] is False
    assert "attend to each other" in info["batching"] and any("length" in s for s in said)
    assert 0.0 <= info["padding_share"] < 0.5


def test_run_json_records_precision_padding_and_loss_path(tmp_path, tiny_model_dir, dataset):  # noqa: F811
    cfg = make_cfg(tmp_path, tiny_model_dir, precision="fp32", group_by_length=True, max_steps=3)
    info = read_run(train(cfg, dataset, "h", show_progress=False).run_dir)
    assert info["precision"] == "fp32" and "asked for" in info["precision_reason"]
    assert info["label_only_loss"] is True and info["batching"] == "length buckets"
    assert info["padding_share"] is not None and info["padding_share_planned"] is not None
    assert info["padding_share"] <= info["padding_share_planned"] + 0.02  # the batches trained are the planned ones


def test_explicit_bf16_on_a_cpu_without_it_is_an_error(tmp_path, tiny_model_dir, dataset, monkeypatch):  # noqa: F811
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda *a, **k: [])
    with pytest.raises(TailorError, match="no native BF16 instructions"):
        prec.choose_precision("bf16", "cpu", setting="train.precision")
    auto = prec.choose_precision("auto", "cpu")
    assert auto.name == "fp32" and "no native BF16" in auto.reason
    cfg = make_cfg(tmp_path, tiny_model_dir, precision="bf16", max_steps=1)
    with pytest.raises(TailorError, match="train.precision: bf16"):
        train(cfg, dataset, "h", show_progress=False)


def test_auto_picks_bf16_where_the_cpu_has_it(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert prec.cpu_bf16_flags(info) == ["avx512_bf16"]
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda *a, **k: ["amx_bf16"])
    choice = prec.choose_precision("auto", "cpu")
    assert choice.bf16 and "amx_bf16" in choice.reason


def test_bf16_training_keeps_adapter_updates(tiny_tokenizer):
    """Under bf16 autocast a small adapter delta must still change the output (PEFT's bf16 sum rounds it away)."""
    from peft import LoraConfig, get_peft_model

    from llmtailor.train.lora_fp32 import keep_adapters_fp32

    inputs = _batch(len(tiny_tokenizer))
    outs = []
    for patch in (False, True):
        model = get_peft_model(build_tiny_model(tiny_tokenizer, seed=6).to(torch.bfloat16),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        if patch:
            assert keep_adapters_fp32(model) > 0
        before = label_only_loss(model, inputs, autocast_bf16=True).loss.item()
        with torch.no_grad():  # a delta of ~1e-4 relative: below one bf16 step of the base outputs
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(2e-4)
        after = label_only_loss(model, inputs, autocast_bf16=True).loss.item()
        outs.append(after - before)
    assert outs[1] != 0.0
    assert abs(outs[1]) > abs(outs[0])


def test_bf16_lora_sums_stay_fp32_and_inputs_are_cast_once(tiny_tokenizer):
    """Adapter sums stay fp32 except v_proj's (cast to bf16 unchanged by attention); q/k/v share one bf16 input
    cast; the frozen tied embedding gets no gradient; adapter gradients are fp32 and the loss tracks fp32."""
    from peft import LoraConfig, get_peft_model

    from llmtailor.train.lora_fp32 import keep_adapters_fp32

    inputs = _batch(len(tiny_tokenizer))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    ref = get_peft_model(build_tiny_model(tiny_tokenizer, seed=8), lora)
    fp32_loss = label_only_loss(ref, inputs).loss.item()
    model = get_peft_model(build_tiny_model(tiny_tokenizer, seed=8).to(torch.bfloat16), lora)
    plain = model(**inputs).logits  # without autocast the patch must change nothing
    keep_adapters_fp32(model)
    torch.testing.assert_close(model(**inputs).logits, plain, rtol=0, atol=0)
    out_dtypes: dict[str, torch.dtype] = {}
    base_inputs: dict[str, int] = {}
    layer = model.base_model.model.model.layers[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        mod = getattr(layer.self_attn, name)
        mod.register_forward_hook(lambda m, a, out, name=name: out_dtypes.__setitem__(name, out.dtype))
        mod.base_layer.register_forward_hook(lambda m, a, out, name=name: base_inputs.__setitem__(name, id(a[0])))
    for name in ("gate_proj", "up_proj", "down_proj"):
        mod = getattr(layer.mlp, name)
        mod.register_forward_hook(lambda m, a, out, name=name: out_dtypes.__setitem__(name, out.dtype))
    out = label_only_loss(model, inputs, autocast_bf16=True)
    out.loss.backward()
    assert {out_dtypes[n] for n in ("q_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")} == {
        torch.float32}
    assert out_dtypes["v_proj"] == torch.bfloat16
    assert base_inputs["q_proj"] == base_inputs["k_proj"] == base_inputs["v_proj"]  # one bf16 cast, shared
    embed = model.get_input_embeddings().weight
    assert not embed.requires_grad and embed.grad is None
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
    assert out.loss.item() == pytest.approx(fp32_loss, rel=0.02)


def test_trainable_weights_stay_fp32_under_bf16(tmp_path, tiny_model_dir, dataset, monkeypatch):  # noqa: F811
    import llmtailor.models as models

    seen = {}
    orig = models.load_model

    def spy(*a, **k):
        model, tok = orig(*a, **k)
        seen["model"] = model
        return model, tok

    monkeypatch.setattr(models, "load_model", spy)
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda *a, **k: ["avx512_bf16"])  # also on CPUs without it
    cfg = make_cfg(tmp_path, tiny_model_dir, precision="bf16", max_steps=1)
    info = read_run(train(cfg, dataset, "h", show_progress=False).run_dir)
    assert info["precision"] == "bf16" and info["base_weights"] == "bf16"
    trainable = [p for p in seen["model"].parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)


def test_only_right_padding_drops_the_mask():
    from llmtailor.train.loss import _right_padded

    assert _right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not _right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))  # left padding must keep its mask
    assert not _right_padded(torch.tensor([[1, 0, 1]]))

