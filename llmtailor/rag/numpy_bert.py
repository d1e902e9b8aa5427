"""A BERT sentence encoder in plain numpy, for query embedding without importing torch.

`tailor rag query` is a one-shot process: importing torch + transformers + sentence-transformers and loading
the model took most of its ~10 s. A query is one short text, so the forward pass is a handful of small matrix
products that numpy does in milliseconds; what matters is start-up. This module needs only numpy and the
`tokenizers` package (already installed with transformers) and reads the weights straight from the
model's `model.safetensors` through a memory map (the file format is a JSON header and raw arrays).

It implements exactly what sentence-transformers runs for a BERT folder: `Transformer` (BertModel, absolute
positions, exact erf GELU, post-LayerNorm), `Pooling` (mean or CLS), optional `Normalize`, with the folder's
`max_seq_length` truncation. Anything else (other architectures, a Dense head, another pooling) is refused by
`NumpyBert.supports`, and the caller keeps using sentence-transformers. Vectors match sentence-transformers to
cosine >= 0.9999 (tests/unit/rag/test_numpy_bert.py).
"""

from __future__ import annotations

import json
import math
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from llmtailor.rag.blas import single_thread

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
_INT_DTYPES = {"I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_SUPPORTED_MODULES = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a numpy array: floats as float32 (F32 ones memory-mapped, not
    copied), integer buffers (like BERT's position_ids) as they are."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec["dtype"]) or _INT_DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}")
        start, end = spec["data_offsets"]
        arr = raw[base + start : base + end].view(dtype).reshape(spec["shape"])
        if spec["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif spec["dtype"] in ("F16", "F64"):
            arr = arr.astype(np.float32)
        out[name] = arr
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (max error 1.5e-7, below float32 resolution); numpy has no erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


class NumpyBert:
    """Sentence embeddings of a local sentence-transformers BERT folder, computed with numpy."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        why = self.unsupported(self.folder)
        if why:
            raise ValueError(f"{self.folder}: {why}")
        cfg = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.max_positions = int(cfg.get("max_position_embeddings", 512))
        st_cfg = self.folder / "sentence_bert_config.json"
        st = json.loads(st_cfg.read_text(encoding="utf-8")) if st_cfg.exists() else {}
        self.max_seq_length = min(int(st.get("max_seq_length") or self.max_positions), self.max_positions)
        self.pooling, self.normalize = self._head(self.folder)
        self._lock = threading.Lock()
        self._weights: dict[str, Any] | None = None
        self._tokenizer: Any = None
        self._prepared = False
        self._calls = 0

    # ------------------------------------------------------------------ what is supported
    @staticmethod
    def _modules(folder: Path) -> list[dict[str, Any]]:
        path = folder / "modules.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []

    @classmethod
    def unsupported(cls, folder: Path) -> str | None:
        """Why this folder cannot run here (None when it can)."""
        folder = Path(folder)
        try:
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            modules = cls._modules(folder)
        except (OSError, json.JSONDecodeError) as e:
            return f"unreadable model config ({e})"
        if cfg.get("model_type") != "bert":
            return f"model_type {cfg.get('model_type')!r} is not bert"
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            return "only absolute position embeddings are supported"
        if cfg.get("hidden_act", "gelu") != "gelu":
            return f"activation {cfg.get('hidden_act')!r} is not gelu"
        if not modules or any(m.get("type") not in _SUPPORTED_MODULES for m in modules):
            return "modules.json must be Transformer + Pooling (+ Normalize)"
        if modules[0].get("type") != "sentence_transformers.models.Transformer" or modules[0].get("path", "") != "":
            return "the first module must be the Transformer at the folder root"
        if not (folder / "model.safetensors").exists() or not (folder / "tokenizer.json").exists():
            return "needs model.safetensors and tokenizer.json"
        try:
            cls._head(folder)
        except ValueError as e:
            return str(e)
        return None

    @classmethod
    def supports(cls, folder: str | Path) -> bool:
        return cls.unsupported(Path(folder)) is None

    @classmethod
    def _head(cls, folder: Path) -> tuple[str, bool]:
        pooling, normalize = None, False
        for m in cls._modules(folder):
            if m["type"] == "sentence_transformers.models.Pooling":
                pcfg = json.loads((folder / m["path"] / "config.json").read_text(encoding="utf-8"))
                modes = [k for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                                     "pooling_mode_lasttoken") if pcfg.get(k)]
                if pcfg.get("pooling_mode") in ("mean", "cls") and not modes:
                    modes = [f"pooling_mode_{'mean_tokens' if pcfg['pooling_mode'] == 'mean' else 'cls_token'}"]
                if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
                    raise ValueError(f"pooling {modes or pcfg} is not mean or CLS alone")
                if pcfg.get("include_prompt", True) is not True:
                    raise ValueError("pooling with include_prompt=false is not supported")
                pooling = "mean" if modes == ["pooling_mode_mean_tokens"] else "cls"
            elif m["type"] == "sentence_transformers.models.Normalize":
                normalize = True
        if pooling is None:
            raise ValueError("no Pooling module")
        return pooling, normalize

    # ------------------------------------------------------------------ loading
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(self.max_seq_length)
            self._tokenizer = tok
        return self._tokenizer

    def _load(self) -> dict[str, Any]:
        if self._weights is not None:
            return self._weights
        with self._lock:
            if self._weights is None:
                raw = read_safetensors(self.folder / "model.safetensors")
                prefix = "bert." if any(k.startswith("bert.") for k in raw) else ""

                def t(name: str) -> np.ndarray:
                    return raw[prefix + name]

                w: dict[str, Any] = {
                    "word": t("embeddings.word_embeddings.weight"),
                    "pos": t("embeddings.position_embeddings.weight"),
                    "type": t("embeddings.token_type_embeddings.weight"),
                    "ln": (t("embeddings.LayerNorm.weight"), t("embeddings.LayerNorm.bias")),
                    "layers": [],
                }
                for i in range(self.layers):
                    p = f"encoder.layer.{i}."
                    # q, k and v as one (hidden, 3*hidden) matrix: one product instead of three.
                    qkv = np.concatenate([t(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")])
                    qkv_b = np.concatenate([t(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
                    # Transposed views for now (x @ W.T without a copy); `_prepare` makes them contiguous.
                    w["layers"].append({
                        "qkv": qkv.T, "qkv_b": qkv_b,
                        "o": t(p + "attention.output.dense.weight").T,
                        "o_b": t(p + "attention.output.dense.bias"),
                        "ln1": (t(p + "attention.output.LayerNorm.weight"), t(p + "attention.output.LayerNorm.bias")),
                        "i": t(p + "intermediate.dense.weight").T,
                        "i_b": t(p + "intermediate.dense.bias"),
                        "out": t(p + "output.dense.weight").T,
                        "out_b": t(p + "output.dense.bias"),
                        "ln2": (t(p + "output.LayerNorm.weight"), t(p + "output.LayerNorm.bias")),
                    })
                self._weights = w
        return self._weights

    def _prepare(self) -> None:
        """Contiguous (in, out) copies of the weight matrices: products twice as fast on one thread, but the copy
        (43 MB for MiniLM) costs more than one query gains, so it is made on the second query, never in a one-shot
        process such as `tailor rag query`."""
        with self._lock:
            if self._prepared:
                return
            w = dict(self._load())
            matrices = ("qkv", "o", "i", "out")
            w["layers"] = [{k: np.ascontiguousarray(v) if k in matrices else v for k, v in layer.items()}
                           for layer in w["layers"]]
            self._weights = w
            self._prepared = True

    def warm_up(self) -> None:
        self._load()
        _ = self.tokenizer

    # ------------------------------------------------------------------ forward
    def _forward(self, ids: np.ndarray) -> np.ndarray:
        """Token ids (seq,) -> last hidden states (seq, hidden)."""
        w = self._load()
        n = ids.shape[0]
        x = w["word"][ids] + w["pos"][:n] + w["type"][0]
        x = _layer_norm(x, *w["ln"], self.eps)
        hd = self.hidden // self.heads
        scale = 1.0 / math.sqrt(hd)
        for layer in w["layers"]:
            qkv = x @ layer["qkv"] + layer["qkv_b"]  # (n, 3h)
            q, k, v = (qkv[:, j * self.hidden : (j + 1) * self.hidden].reshape(n, self.heads, hd).transpose(1, 0, 2)
                       for j in range(3))
            scores = (q @ k.transpose(0, 2, 1)) * scale  # (heads, n, n)
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, self.hidden)
            x = _layer_norm(ctx @ layer["o"] + layer["o_b"] + x, *layer["ln1"], self.eps)
            h = _gelu(x @ layer["i"] + layer["i_b"])
            x = _layer_norm(h @ layer["out"] + layer["out_b"] + x, *layer["ln2"], self.eps)
        return x

    def encode_one(self, text: str) -> np.ndarray:
        """One float32 sentence vector (unit length when the folder has a Normalize module)."""
        self._calls += 1
        if self._calls > 1 and not self._prepared:
            self._prepare()
        ids = np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)
        # One thread: these products are small, and BLAS threads made them 10-20x slower on a busy 2-core machine.
        with single_thread():
            hidden = self._forward(ids).astype(np.float32, copy=False)
        vec = hidden.mean(0) if self.pooling == "mean" else hidden[0]
        if self.normalize:
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return np.ascontiguousarray(vec, dtype=np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        dim = self.hidden
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([self.encode_one(t) for t in texts])
