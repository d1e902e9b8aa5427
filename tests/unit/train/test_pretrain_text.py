"""Continued pretraining on a tiny random model: files read through the RAG loaders, packed into blocks, loss on
every token, bad files named; the adapter can start SFT."""

import json
from pathlib import Path

import pytest

from llmtailor.config import TailorConfig
from llmtailor.errors import TailorError
from llmtailor.runs import read_run
from llmtailor.train.pretrain import pack_blocks, read_documents


def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("The customer cannot log in to the portal after the password reset. " * 6)
    (d / "sub" / "b.md").write_text("---\ntitle: B\n---\n# Billing\n\nPlease classify the ticket and answer. " * 3)
    (d / ".hidden.txt").write_text("never read")
    (d / "image.png").write_bytes(b"\x89PNG\x00\x00")
    return d


def make_cfg(tmp_path: Path, model_dir: Path, sources: list, **train) -> TailorConfig:
    base = {"objective": "pretrain", "learning_rate": 1e-2, "batch_size": 2, "max_steps": 6, "save_steps": 100,
            "warmup_ratio": 0.0, "lora_r": 8, "lora_alpha": 16, "logging_steps": 1}
    base.update(train)
    return TailorConfig.model_validate({
        "runs_dir": str(tmp_path / "runs"),
        "model": {"base_model": str(model_dir), "device": "cpu", "precision": "fp32"},
        "data": {"max_seq_len": 128},
        "train": base,
        "pretrain": {"sources": [str(s) for s in sources], "block_size": 32},
    })


def test_documents_read_and_packed(tmp_path, tiny_tokenizer):
    docs = read_documents([corpus(tmp_path)])
    assert [d.path.name for d in docs] == ["a.txt", "b.md"]
    assert not docs[1].text.startswith("---")  # front matter is metadata, not text
    blocks = pack_blocks(docs, tiny_tokenizer, 32)
    stream = [t for b in blocks for t in b]
    assert all(len(b) == 32 for b in blocks[:-1]) and 1 < len(blocks[-1]) <= 32
    expect = (tiny_tokenizer(docs[0].text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
              + tiny_tokenizer(docs[1].text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id])
    assert stream == expect  # nothing lost, documents separated by end-of-text


@pytest.mark.parametrize("name, data, words", [
    ("empty.txt", b"", "empty file"),
    ("blank.md", b"  \n\n ", "empty file"),
    ("bin.txt", b"abc\x00\x01\x02" * 20, "binary content"),
    ("latin.txt", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
    ("data.bin", b"hello", "unsupported file type"),
])
def test_bad_files_are_named(tmp_path, name, data, words):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(TailorError, match=rf"{name}: .*{words}"):
        read_documents([f])


def test_relative_sources_resolve_against_the_config_folder(tmp_path, monkeypatch):
    from llmtailor.config import load_config
    from llmtailor.train.pretrain import source_paths

    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "tailor.yaml").write_text("pretrain:\n  sources: [corpus, /abs/x.txt]\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("proj/tailor.yaml")
    assert source_paths(cfg) == [(tmp_path / "proj" / "corpus").resolve(), Path("/abs/x.txt")]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(TailorError, match="no text files configured"):
        read_documents([])
    with pytest.raises(TailorError, match="not found"):
        read_documents([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TailorError, match="no readable files"):
        read_documents([tmp_path / "empty"])


def test_pretrain_lowers_loss_then_sft_starts_from_it(tmp_path, tiny_model_dir):
    from llmtailor.io import write_jsonl
    from llmtailor.train.objectives import trainer_for
    from llmtailor.train.pretrain import train as pretrain
    from llmtailor.train.sft import train as sft
    from tests.unit.test_train import rows

    ds = tmp_path / "ds"
    write_jsonl(ds / "train.jsonl", rows(4))
    write_jsonl(ds / "eval.jsonl", rows(2))
    cfg = make_cfg(tmp_path, tiny_model_dir, [corpus(tmp_path)])
    assert trainer_for(cfg) is pretrain
    result = pretrain(cfg, ds, "h", show_progress=False)
    info = read_run(result.run_dir)
    assert info["status"] == "completed" and info["objective"] == "pretrain" and info["blocks"] > 2
    curve = [json.loads(x)["loss"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert curve[-1] < curve[0], curve
    assert (result.adapter_dir / "adapter_model.safetensors").exists()

    # The regression suite and the ladder run on it like on any run: eval reads adapter/ and the dataset version.
    from llmtailor.eval.evaluate import evaluate

    ev_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "max_new_tokens": 4, "metrics": ["token_f1"], "variants": ["base", "tuned"]})})
    assert {"base", "tuned"} <= set(evaluate(ev_cfg, result.run_dir, show_progress=False).variants)

    # A vanishing learning rate: the SFT adapter must come out as the pretrained one (it started from it).
    sft_cfg = make_cfg(tmp_path, tiny_model_dir, [], objective="sft", max_steps=1, group_by_length=False,
                       learning_rate=1e-12, init_adapter=result.run_dir.name)
    tuned = sft(sft_cfg, ds, "h", show_progress=False)
    info = read_run(tuned.run_dir)
    assert info["status"] == "completed" and info["parents"] == [result.run_dir.name]
    from safetensors.torch import load_file

    a = load_file(result.adapter_dir / "adapter_model.safetensors")
    b = load_file(tuned.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].allclose(b[k], atol=1e-6) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # pretraining moved the (zero-initialised) B
