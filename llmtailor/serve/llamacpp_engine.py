"""`tailor serve --engine llamacpp`: the same server front, with llama.cpp (through llama-cpp-python) decoding.

Why llama-cpp-python in process rather than llama.cpp's server as a subprocess: measured in bench/serve.py, the
in-process engine reaches the server's single-stream speed, and keeping it in process keeps one request path
(keys, tenants, RAG, guardrails, routing, canary/shadow and metrics all run before the engine sees token ids),
one process to supervise, and adapters that load without a restart (llama-server takes its LoRA list at start).

Design: a few *slots*, each a `llama_cpp.Llama` context on the base GGUF (memory-mapped, so the weights are
shared by the page cache). One worker thread owns them all and decodes round-robin, one token per active slot
per turn, so a request that arrives while others stream starts at once instead of waiting for them to finish.
A slot keeps its KV cache after a request, and llama-cpp-python reuses the longest common prefix of the next
prompt, so the worker gives a new request the free slot whose cached tokens share the longest prefix with it
(system prompts and RAG templates are computed once). Adapters are GGUF LoRA files (exported from the PEFT
adapter on first use and cached, see llmtailor/export) applied per slot with `llama_set_adapters_lora`; a slot
that switches adapter drops its KV cache. Token ids come from the same Hugging Face tokenizer as the
transformers engine, so prompts, stop strings and streaming text are handled by the same code
(`Engine._advance`).

Not carried (refused with a message, not silently ignored): DoRA adapters (llama.cpp has no DoRA: serve them with
`--engine transformers`); full fine-tuned runs (export them with `tailor export --merge` and serve that GGUF).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError, UnsupportedAdapter
from llmtailor.serve.engine import Engine, EngineStats, GenRequest, fair_order

INSTALL_HINT = "pip install 'llmtailor[llamacpp]'"


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def require_llama_cpp() -> Any:
    """Import llama_cpp or fail with the install hint (the CLI turns this into a non-zero exit).

    OMP_WAIT_POLICY=PASSIVE (unless the user set it): ggml's OpenMP threads otherwise spin while they wait for
    each other, and any other work on the machine (the server's own HTTP and RAG threads included) then slows
    decoding many times over; measured with 2 threads on 2 busy cores: 1.5 tokens/s spinning, 26 passive. It must
    be set before libgomp loads, i.e. before llama_cpp is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as e:
        raise TailorError(f"the llama.cpp engine needs llama-cpp-python: {INSTALL_HINT}") from e
    return llama_cpp


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """llama.cpp prints model-loading chatter on the C stderr; users see our messages, not that."""
    if os.environ.get("LLMTAILOR_DEBUG"):
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)


class LlamaGrammarConstraint:
    """A request's grammar for llama.cpp's sampler. llama.cpp enforces it while sampling; `accept` has nothing
    left to check. Unlike the transformers engine's xgrammar constraint there is no closing policy: an answer cut
    by max_tokens ends with finish_reason "length" and may not parse."""

    completed = False

    def __init__(self, grammar: Any):
        self.grammar = grammar

    def accept(self, tok: int) -> bool:
        return True

    def mask(self, row: Any, remaining: int) -> None:  # the engine never calls it; kept for the interface
        return None


class LlamaStructured:
    """`response_format` → a llama.cpp GBNF grammar (llama-cpp-python's JSON-schema converter), compiled once to
    check that llama.cpp accepts it, so a grammar it cannot compile is a 400, not a failed generation."""

    def __init__(self, llama_cpp: Any, model: Any):
        self.llama_cpp = llama_cpp
        self.model = model
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def gbnf(self, fmt: Any) -> str:
        from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

        from llmtailor.serve.structured import ResponseFormatError, enforceable_schema

        with self._lock:
            if fmt.key in self._cache:
                return self._cache[fmt.key]
        if fmt.kind == "json_object":
            text = JSON_GBNF
        else:
            schema, _, unmerged = enforceable_schema(fmt.schema or {})
            if unmerged:
                raise ResponseFormatError(
                    f"response_format schema cannot be enforced: allOf at {', '.join(unmerged)} overlaps its parent")
            try:
                text = json_schema_to_gbnf(json.dumps(schema))
            except Exception as e:  # the converter raises for keywords it does not know
                raise ResponseFormatError(f"response_format schema cannot be turned into a llama.cpp grammar: {e}"
                                          ) from None
        self.check(text)
        with self._lock:
            self._cache[fmt.key] = text
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return text

    def check(self, text: str) -> None:
        """Compile the grammar with llama.cpp's own parser; ResponseFormatError if it refuses it."""
        from llmtailor.serve.structured import ResponseFormatError

        lc = self.llama_cpp
        vocab = lc.llama_model_get_vocab(self.model.model)
        with quiet_native():
            sampler = lc.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
        if not sampler:
            raise ResponseFormatError("response_format: llama.cpp could not compile the grammar for this schema")
        lc.llama_sampler_free(sampler)

    def constraint(self, fmt: Any, max_tokens: int) -> LlamaGrammarConstraint:
        from llama_cpp import LlamaGrammar

        text = self.gbnf(fmt)
        with quiet_native():
            return LlamaGrammarConstraint(LlamaGrammar.from_string(text, verbose=False))


@dataclass
class Slot:
    """One llama.cpp context: its KV cache, the adapter set on it, the request it decodes."""

    llm: Any
    adapter: str | None = None
    loras: dict[str, Any] = field(default_factory=dict)  # adapter name -> llama_adapter_lora pointer
    req: GenRequest | None = None
    gen: Any = None
    last_used: float = 0.0

    def cached_prefix(self, ids: list[int]) -> int:
        n = int(self.llm.n_tokens)
        cached = self.llm._input_ids[:n].tolist()
        k = 0
        for a, b in zip(cached, ids, strict=False):
            if a != b:
                break
            k += 1
        return k


class LlamaCppEngine(Engine):
    """Engine's interface (submit, stream, complete, adapters, stats) over llama.cpp slots."""

    def __init__(self, gguf: Path, tokenizer: Any, *, slots: int = 4, n_ctx: int = 2048, n_threads: int | None = None,
                 max_loaded_adapters: int = 8, stats: EngineStats | None = None,
                 adapter_gguf: Callable[[Path], Path] | None = None, max_queue: int = 256, flash_attn: bool = True):
        lc = require_llama_cpp()
        self.max_queue = max_queue
        self.llama_cpp = lc
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise TailorError(f"{self.gguf}: GGUF file not found")
        self.tokenizer = tokenizer
        self.model = None  # no torch model: RAG and guardrails only need the tokenizer
        self.max_model_len = int(n_ctx)
        self.max_loaded_adapters = max_loaded_adapters
        self.max_batch_size = slots
        self.stats = stats or EngineStats()
        self.adapter_gguf = adapter_gguf
        self.n_threads = n_threads or default_threads()
        self.flash_attn = flash_attn
        self._paths: dict[str, Path] = {}
        self._ggufs: dict[str, Path] = {}
        self._loaded: OrderedDict[str, Path] = OrderedDict()
        self._dora: set[str] = set()
        self._merged: dict[str, Any] = {}
        self._pending: list[GenRequest] = []
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.adapter_loads = 0
        self.prefix_hits = 0
        self.prefix_misses = 0
        self.prefix_cache_size = 0
        with quiet_native():
            self.slots = [self._new_context() for _ in range(max(1, slots))]
        self.eos_ids = _eos_ids(tokenizer, self.slots[0].llm)
        self._check_vocab()
        self._structured: LlamaStructured | None = None
        self._structured_lock = threading.Lock()

    def _new_context(self) -> Slot:
        from llama_cpp import Llama

        llm = Llama(model_path=str(self.gguf), n_ctx=self.max_model_len, n_batch=512, n_threads=self.n_threads,
                    n_threads_batch=self.n_threads, verbose=False, use_mmap=True, flash_attn=self.flash_attn)
        return Slot(llm)

    def _check_vocab(self) -> None:
        """The HF tokenizer's ids must be the GGUF's ids: same text, same tokens (else every answer is noise)."""
        probe = "Hello, world! Ünïcode and JSON: {\"a\": [1, 2]}"
        ours = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        theirs = self.slots[0].llm.tokenize(probe.encode("utf-8"), add_bos=False, special=False)
        if list(ours) != list(theirs):
            raise TailorError(f"{self.gguf.name}: its vocabulary does not match the model's tokenizer; serve the GGUF "
                              "exported from this model (`tailor export --format gguf --merge`)")

    def structured(self) -> LlamaStructured:
        with self._structured_lock:
            if self._structured is None:
                self._structured = LlamaStructured(self.llama_cpp, self.slots[0].llm._model)
            return self._structured

    def clear_prefix_cache(self) -> None:
        with self._cond:
            for s in self.slots:
                if s.req is None:
                    s.llm.reset()

    # ---- adapters --------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: Path) -> None:
        """Make an adapter known; it is exported to GGUF and loaded on the first request that uses it."""
        from llmtailor.serve.engine import _uses_dora

        path = Path(path)
        if not (path / "adapter_config.json").exists():
            raise TailorError(f"{path}: no adapter_config.json; not a PEFT adapter folder")
        if _uses_dora(path):
            raise UnsupportedAdapter(f"{path}: a DoRA adapter; llama.cpp has no DoRA. Serve it with --engine "
                                     "transformers, or merge it (`tailor export --merge`)")
        self._paths[name] = path

    def _gguf_for(self, name: str) -> Path:
        if name not in self._ggufs:
            path = self._paths[name]
            if path.suffix == ".gguf":
                self._ggufs[name] = path
            elif self.adapter_gguf is None:
                raise TailorError(f"adapter {name!r}: no GGUF exporter configured")
            else:
                self._ggufs[name] = self.adapter_gguf(path)
        return self._ggufs[name]

    def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        t0 = time.perf_counter()
        gguf = self._gguf_for(name)
        while len(self._loaded) >= self.max_loaded_adapters:
            victim = next((n for n in self._loaded if all(s.req is None or s.adapter != n for s in self.slots)),
                          None)
            if victim is None:
                break
            self._evict(victim)
        self._loaded[name] = gguf
        self.adapter_loads += 1
        self.stats.adapter_loaded(name, time.perf_counter() - t0)

    def _evict(self, name: str) -> None:
        self._loaded.pop(name, None)
        for s in self.slots:
            ptr = s.loras.pop(name, None)
            if s.adapter == name:
                self._set_adapter(s, None)
            if ptr is not None:
                self.llama_cpp.llama_adapter_lora_free(ptr)

    def _set_adapter(self, slot: Slot, name: str | None) -> None:
        """Apply `name`'s LoRA (None: the plain base) on the slot's context; its KV cache no longer fits."""
        if slot.adapter == name:
            return
        lc = self.llama_cpp
        ctx = slot.llm._ctx.ctx
        if name is None:
            rc = lc.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            ptr = slot.loras.get(name)
            if ptr is None:
                with quiet_native():
                    ptr = lc.llama_adapter_lora_init(slot.llm._model.model, str(self._loaded[name]).encode())
                if not ptr:
                    raise TailorError(f"llama.cpp could not load the LoRA GGUF {self._loaded[name]} for {name!r} "
                                      "(was it exported for this base?)")
                slot.loras[name] = ptr
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(ptr)
            scales = (ctypes.c_float * 1)(1.0)
            rc = lc.llama_set_adapters_lora(ctx, adapters, 1, scales)
        if rc:
            raise TailorError(f"llama.cpp refused to set adapter {name!r} (code {rc})")
        slot.adapter = name
        slot.llm.reset()

    # ---- the worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while self._running:
            self._admit()
            active = [s for s in self.slots if s.req is not None]
            if not active:
                with self._cond:
                    if self._running and not self._pending:
                        self._cond.wait(timeout=0.5)
                continue
            self.batches_run += 1
            self.stats.batch(len(active), len({s.adapter for s in active}))
            for s in active:
                self._step(s)

    def _admit(self) -> None:
        """Give queued requests free slots, round-robin across owners (fair_order); each takes the free slot with
        its adapter and the longest cached prefix."""
        with self._cond:
            self._pending = [r for r in self._pending if not r.cancelled.is_set()]
            if not self._pending:
                return
            free = [s for s in self.slots if s.req is None]
            taken = []
            for r in fair_order(self._pending):
                if not free:
                    break
                best = max(free, key=lambda s: (s.adapter == r.adapter, s.cached_prefix(r.prompt_ids),
                                                -s.last_used))
                free.remove(best)
                taken.append((best, r))
            done = {id(r) for _, r in taken}
            self._pending = [r for r in self._pending if id(r) not in done]
            self.stats.queue_depth(len(self._pending))
        for slot, r in taken:
            self._start(slot, r)

    def _start(self, slot: Slot, r: GenRequest) -> None:
        try:
            if r.adapter is not None:
                self._ensure_loaded(r.adapter)
            self._set_adapter(slot, r.adapter)
            hit = slot.cached_prefix(r.prompt_ids)
            if hit >= 8:
                self.prefix_hits += 1
            else:
                self.prefix_misses += 1
            self.stats.prefix_lookup(hit >= 8, hit)
            greedy = r.temperature <= 0
            grammar = getattr(r.constraint, "grammar", None)
            slot.gen = slot.llm.generate(
                r.prompt_ids, temp=0.0 if greedy else r.temperature, top_p=1.0 if greedy else r.top_p, top_k=0,
                min_p=0.0, repeat_penalty=1.0, grammar=grammar)
            slot.req = r
        except Exception as e:  # one bad request fails alone
            r.done = True
            r.emit(_error(e))

    def _step(self, slot: Slot) -> None:
        r = slot.req
        assert r is not None
        try:
            if r.cancelled.is_set():
                r.done, r.finish_reason = True, "cancelled"
                self.stats.finished(r, len(r.ids), time.perf_counter() - r.created)
            else:
                tok = next(slot.gen)
                self._advance(r, int(tok))
        except StopIteration:
            if not r.done:
                self._finish(r, "length")
        except Exception as e:
            if not r.done:
                r.done = True
                r.emit(_error(e))
            slot.llm.reset()
        if r.done:
            with contextlib.suppress(Exception):
                slot.gen.close()
            slot.gen, slot.req, slot.last_used = None, None, time.perf_counter()

    def stop(self) -> None:
        super().stop()
        for s in self.slots:
            if s.req is not None and not s.req.done:
                s.req.done = True
                s.req.emit(_error(TailorError("server shutting down")))
            s.req = s.gen = None
        self.close()

    def close(self) -> None:
        """Free llama.cpp's memory now (adapters, contexts): left to garbage collection at interpreter exit,
        llama-cpp-python's finalizers run after its module is torn down and print tracebacks."""
        for s in self.slots:
            for ptr in s.loras.values():
                with contextlib.suppress(Exception):
                    self.llama_cpp.llama_adapter_lora_free(ptr)
            s.loras.clear()
            with contextlib.suppress(Exception):
                s.llm.close()


def _error(e: Exception) -> Any:
    from llmtailor.serve.engine import Event

    return Event("error", error=e)


def _eos_ids(tokenizer: Any, llm: Any) -> list[int]:
    ids = {tokenizer.eos_token_id, int(llm.token_eos())}
    return sorted(i for i in ids if i is not None and i >= 0)
