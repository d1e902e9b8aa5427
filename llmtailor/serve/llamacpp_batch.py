"""llama.cpp plumbing for the batched engine: one model, one multi-sequence context, batches, samplers.

Thin wrappers over llama-cpp-python's low-level ctypes bindings (`llama_cpp.llama_cpp`), not its high-level `Llama`
class: `Llama` owns a model *and* a single-sequence context, so N of them meant N models and N sequential decodes.
Here the model is loaded once (memory-mapped), LoRA adapters once per model, and one context holds every sequence
(`n_seq_max` = slots), so one `llama_decode` call advances all of them. Every object is freed explicitly
(`close`), never left to finalizers, which would run after the bindings are torn down at interpreter exit.
"""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass, field
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.serve.engine import GenRequest


class NativeModel:
    """The GGUF's llama_model (memory-mapped) and the LoRA adapters loaded on it, one handle per adapter file."""

    def __init__(self, lc: Any, path: str):
        self.lc = lc
        params = lc.llama_model_default_params()
        params.use_mmap = True
        self.model = lc.llama_model_load_from_file(path.encode("utf-8"), params)
        if not self.model:
            raise TailorError(f"{path}: llama.cpp could not load this GGUF")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.adapters: dict[str, Any] = {}  # name -> llama_adapter_lora pointer

    def token_eos(self) -> int:
        return int(self.lc.llama_vocab_eos(self.vocab))

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        buf = (self.lc.llama_token * (len(raw) + 8))()
        n = self.lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, False)
        if n < 0:
            raise TailorError("llama.cpp could not tokenize the vocabulary probe")
        return list(buf[:n])

    def load_adapter(self, name: str, path: str) -> Any:
        """The adapter's handle, loading it on first use (llama_adapter_lora_init once per model, not per slot)."""
        ptr = self.adapters.get(name)
        if ptr is None:
            ptr = self.lc.llama_adapter_lora_init(self.model, path.encode("utf-8"))
            if not ptr:
                raise TailorError(f"llama.cpp could not load the LoRA GGUF {path} for {name!r} (was it exported for "
                                  "this base?)")
            self.adapters[name] = ptr
        return ptr

    def free_adapter(self, name: str) -> None:
        ptr = self.adapters.pop(name, None)
        if ptr is not None:
            self.lc.llama_adapter_lora_free(ptr)

    def close(self) -> None:
        for name in list(self.adapters):
            self.free_adapter(name)
        if self.model:
            self.lc.llama_model_free(self.model)
            self.model = None


@dataclass
class Entry:
    """Tokens of one sequence in one decode call: they take positions pos0, pos0+1, ...; `logits` asks for the
    last token's logits (the batch index comes back from `BatchContext.decode`)."""

    seq: int
    tokens: list[int]
    pos0: int
    logits: bool


class BatchContext:
    """One llama_context with `n_seq` sequences, each allowed `n_ctx` tokens, and the llama_batch it decodes with.

    The KV cache is not unified: `n_ctx * n_seq` cells split into one stream per sequence, which is llama-server's
    layout for `-c (n_ctx * slots) --parallel slots`. Every sequence gets its full n_ctx (no request can fail
    because others hold the cache), and attention for a decode step runs over each sequence's own cells, not over
    every sequence's cells under a mask as a unified cache would.
    """

    def __init__(self, model: NativeModel, *, n_seq: int, n_ctx: int, n_batch: int, n_threads: int,
                 flash_attn: bool):
        lc = self.lc = model.lc
        self.model = model
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx * n_seq
        p.n_seq_max = n_seq
        p.kv_unified = False
        p.n_batch = p.n_ubatch = n_batch
        p.n_threads = p.n_threads_batch = n_threads
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        self.ctx = lc.llama_init_from_model(model.model, p)
        if not self.ctx:
            raise TailorError("llama.cpp could not create a context (out of memory for the KV cache?)")
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.adapter: str | None = None  # the LoRA set on the context now (None: the plain base)
        self.adapter_switches = 0
        self.decode_calls = 0
        self.seqs_per_decode: list[int] = []  # sequences carried by each decode call (recent ones)

    def set_adapter(self, name: str | None) -> None:
        """Make `name`'s LoRA (loaded on the model) the one the next decode calls run with."""
        if name == self.adapter:
            return
        lc = self.lc
        if name is None:
            rc = lc.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self.model.adapters[name])
            rc = lc.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if rc:
            raise TailorError(f"llama.cpp refused to set adapter {name!r} (code {rc})")
        self.adapter = name
        self.adapter_switches += 1

    def decode(self, entries: list[Entry]) -> list[int | None]:
        """One llama_decode over all entries (at most n_batch tokens in all); per entry, the batch index of its
        logits (None where not asked)."""
        b = self.batch
        n = 0
        out: list[int | None] = []
        for e in entries:
            for j, tok in enumerate(e.tokens):
                b.token[n] = tok
                b.pos[n] = e.pos0 + j
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = e.seq
                b.logits[n] = 0
                n += 1
            if e.logits:
                b.logits[n - 1] = 1
            out.append(n - 1 if e.logits else None)
        if n > self.n_batch:
            raise TailorError(f"decode of {n} tokens exceeds n_batch={self.n_batch}")
        b.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise TailorError(f"llama_decode failed (code {rc})")
        self.decode_calls += 1
        self.seqs_per_decode.append(len(entries))
        del self.seqs_per_decode[:-1024]
        return out

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop the sequence's cells at positions [p0, p1) (-1: open end); all of them by default."""
        return bool(self.lc.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        if self.ctx:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None


class Sampler:
    """One request's llama.cpp sampler chain: [grammar] then greedy, or [grammar] top-p, temperature, seeded dist.

    The same order llama-cpp-python's `Llama.generate` uses, so greedy answers equal its own."""

    def __init__(self, model: NativeModel, *, temperature: float, top_p: float, grammar: Any = None,
                 seed: int | None = None):
        lc = self.lc = model.lc
        params = lc.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = lc.llama_sampler_chain_init(params)
        if grammar is not None:
            g = lc.llama_sampler_init_grammar(model.vocab, grammar._grammar.encode("utf-8"),
                                              grammar._root.encode("utf-8"))
            if not g:
                lc.llama_sampler_free(self.chain)
                raise TailorError("llama.cpp could not compile the request's grammar")
            lc.llama_sampler_chain_add(self.chain, g)
        if temperature <= 0:
            lc.llama_sampler_chain_add(self.chain, lc.llama_sampler_init_greedy())
        else:
            if top_p < 1.0:
                lc.llama_sampler_chain_add(self.chain, lc.llama_sampler_init_top_p(top_p, 1))
            lc.llama_sampler_chain_add(self.chain, lc.llama_sampler_init_temp(temperature))
            seed = random.getrandbits(32) if seed is None else int(seed) & 0xFFFFFFFF
            lc.llama_sampler_chain_add(self.chain, lc.llama_sampler_init_dist(seed))

    def sample(self, ctx: BatchContext, idx: int) -> int:
        """The next token from logits row `idx` of the last decode (and accepted into the chain's state)."""
        return int(self.lc.llama_sampler_sample(self.chain, ctx.ctx, idx))

    def close(self) -> None:
        if self.chain:
            self.lc.llama_sampler_free(self.chain)
            self.chain = None


@dataclass
class Slot:
    """One sequence (seq_id) of the shared context: the request it decodes and the tokens its KV cells hold."""

    seq: int
    req: GenRequest | None = None
    adapter: str | None = None  # the adapter the cached KV was computed under
    tokens: list[int] = field(default_factory=list)  # tokens whose KV is in the cache, in position order
    todo: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    last: int | None = None  # the sampled token to feed at the next step
    sampler: Sampler | None = None
    started: bool = False
    last_used: float = 0.0

    def cached_prefix(self, ids: list[int]) -> int:
        k = 0
        for a, b in zip(self.tokens, ids, strict=False):
            if a != b:
                break
            k += 1
        return k
