"""`tailor serve --engine llamacpp`: the same server front, with llama.cpp (through llama-cpp-python) decoding.

Why llama-cpp-python in process rather than llama.cpp's server as a subprocess: measured in bench/serve.py, the
in-process engine reaches the server's single-stream speed, and keeping it in process keeps one request path
(keys, tenants, RAG, guardrails, routing, canary/shadow and metrics all run before the engine sees token ids),
one process to supervise, and adapters that load without a restart (llama-server takes its LoRA list at start).

Design, as llama-server decodes (continuous batching): ONE llama_model (memory-mapped) and ONE llama_context with
`slots` sequences (n_seq_max = slots, each its own seq_id with the full n_ctx of KV cells, i.e. llama-server's
`-c n_ctx*slots --parallel slots` layout; see llamacpp_batch.BatchContext). One worker thread runs steps: at each
step every active sequence advances by one token, all of them in one `llama_decode` call (a llama_batch with one
token per sequence); requests admitted since the last step are prefilled in the same call (their prompt chunk
after the decoding tokens, up to n_batch tokens), so a request that arrives while others stream starts at once.
Each request has its own sampler chain (greedy, or top-p/temperature/seeded dist, after its grammar if any).
A finished sequence keeps its KV cells; a new request takes the free sequence whose cached tokens share the
longest prefix with its prompt (same adapter), and only the tail is removed (`llama_memory_seq_rm`), so system
prompts and RAG templates are computed once.

Adapters are GGUF LoRA files (exported from the PEFT adapter on first use and cached, see llmtailor/export), each
loaded once on the model (`llama_adapter_lora_init(model, path)`), LRU-limited by max_loaded_adapters with only
idle ones evicted. LoRA is set per context, so a step runs one decode call per adapter in use, switching the
context's adapter between calls (`llama_set_adapters_lora`); each sequence's KV is only ever computed under its own
adapter. Why one context and not one context ("lane") per adapter: a lane needs its own KV cache for all the slots
it may serve (memory times lanes, the cost this design removes), while a switch costs little per turn: measured on
this 2-core machine (SmolLM2-135M Q4_1, 8 sequences), one decode of 8 took ~67 ms, two decodes of 4 on one adapter
~78 ms, and two decodes of 4 with two adapter switches ~97 ms, i.e. ~10 ms per switch (the switch itself is 8 us;
the next decode re-reserves its compute graph). So when several adapters are in use, each adapter's sequences
decode for a turn of ADAPTER_TURN_STEPS steps before the next adapter's (one switch per turn, not k-1 per step:
switching every step made 4 adapters x 2 streams slower than one context per slot, bench/results/serve.md); with
one adapter (or the base) in use there is no switch at all.

Token ids come from the same Hugging Face tokenizer as the transformers engine, so prompts, stop strings and
streaming text are handled by the same code (`Engine._advance`).

Not carried (refused with a message, not silently ignored): DoRA adapters (llama.cpp has no DoRA: serve them with
`--engine transformers`); full fine-tuned runs (export them with `tailor export --merge` and serve that GGUF).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError, UnsupportedAdapter
from llmtailor.serve.engine import Engine, EngineStats, GenRequest, deferred_wakeups, fair_order
from llmtailor.serve.llamacpp_batch import BatchContext, Entry, NativeModel, Sampler, Slot

INSTALL_HINT = "pip install 'llmtailor[llamacpp]'"
N_BATCH = 512  # tokens per decode call (prompt chunks beyond it go in later steps)
ADAPTER_TURN_STEPS = 4  # steps one adapter's sequences decode before the next adapter in use gets its turn


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


class LlamaCppEngine(Engine):
    """Engine's interface (submit, stream, complete, adapters, stats) over one llama.cpp model and context."""

    def __init__(self, gguf: Path, tokenizer: Any, *, slots: int = 4, n_ctx: int = 2048, n_threads: int | None = None,
                 max_loaded_adapters: int = 8, stats: EngineStats | None = None,
                 adapter_gguf: Callable[[Path], Path] | None = None, max_queue: int = 256, flash_attn: bool = True,
                 stream_interval_ms: float = 0.0):
        lc = require_llama_cpp()
        self.stream_interval = stream_interval_ms / 1000
        from llama_cpp._logger import set_verbose

        set_verbose(bool(os.environ.get("LLMTAILOR_DEBUG")))  # llama.cpp's own log goes through this logger
        self.max_queue = max_queue
        self.llama_cpp = lc
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise TailorError(f"{self.gguf}: GGUF file not found")
        self.tokenizer = tokenizer
        self.model = None  # no torch model: RAG and guardrails only need the tokenizer
        self.max_model_len = int(n_ctx)
        self.max_loaded_adapters = max_loaded_adapters
        self.max_batch_size = max(1, slots)
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
        self._closed = False
        self.adapter_turn_steps = ADAPTER_TURN_STEPS
        self._turn_left = ADAPTER_TURN_STEPS
        with quiet_native():
            self.native = NativeModel(lc, str(self.gguf))
            try:
                self.ctx = BatchContext(self.native, n_seq=self.max_batch_size, n_ctx=self.max_model_len,
                                        n_batch=N_BATCH, n_threads=self.n_threads, flash_attn=flash_attn)
            except Exception:
                self.native.close()
                raise
        self.models_loaded = 1  # one llama_model for every sequence (the old design loaded one per slot)
        self.slots = [Slot(i) for i in range(self.max_batch_size)]
        self.eos_ids = sorted(i for i in {tokenizer.eos_token_id, self.native.token_eos()} if i is not None and i >= 0)
        self._check_vocab()
        self._structured: LlamaStructured | None = None
        self._structured_lock = threading.Lock()

    @property
    def adapter_handles(self) -> int:
        """LoRA handles alive on the model: one per loaded adapter, however many sequences use it."""
        return len(self.native.adapters)

    def _check_vocab(self) -> None:
        """The HF tokenizer's ids must be the GGUF's ids: same text, same tokens (else every answer is noise)."""
        probe = "Hello, world! Ünïcode and JSON: {\"a\": [1, 2]}"
        ours = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        if list(ours) != self.native.tokenize(probe):
            raise TailorError(f"{self.gguf.name}: its vocabulary does not match the model's tokenizer; serve the GGUF "
                              "exported from this model (`tailor export --format gguf --merge`)")

    def structured(self) -> LlamaStructured:
        with self._structured_lock:
            if self._structured is None:
                self._structured = LlamaStructured(self.llama_cpp, self.native)
            return self._structured

    def clear_prefix_cache(self) -> None:
        """Forget idle sequences' cached tokens; their cells are dropped when the slot is next used."""
        with self._cond:
            for s in self.slots:
                if s.req is None:
                    s.tokens = []

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
        """Load the adapter once on the model (worker thread), evicting the least recently used idle one."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        t0 = time.perf_counter()
        gguf = self._gguf_for(name)
        while len(self._loaded) >= self.max_loaded_adapters:
            busy = {s.req.adapter for s in self.slots if s.req is not None}
            victim = next((n for n in self._loaded if n not in busy), None)
            if victim is None:
                break
            self._evict(victim)
        with quiet_native():
            self.native.load_adapter(name, str(gguf))
        self._loaded[name] = gguf
        self.adapter_loads += 1
        self.stats.adapter_loaded(name, time.perf_counter() - t0)

    def _evict(self, name: str) -> None:
        """Free an idle adapter's handle; sequences cached under it lose their cells (they were its KV)."""
        self._loaded.pop(name, None)
        if self.ctx.adapter == name:
            self.ctx.set_adapter(None)
        for s in self.slots:
            if s.req is None and s.adapter == name:
                s.tokens = []
        self.native.free_adapter(name)

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
            with deferred_wakeups():  # one event-loop wake-up per step for all the requests it advanced
                self._step(active)

    def _admit(self) -> None:
        """Give queued requests free slots, round-robin across owners (fair_order); each takes the free slot with
        its adapter and the longest cached prefix. Bookkeeping only: the worker prefills them at its next step."""
        with self._cond:
            self._pending = [r for r in self._pending if not r.cancelled.is_set()]
            if not self._pending:
                return
            free = [s for s in self.slots if s.req is None]
            taken = set()
            for r in fair_order(self._pending):
                if not free:
                    break
                best = max(free, key=lambda s: (s.adapter == r.adapter, s.cached_prefix(r.prompt_ids),
                                                -s.last_used))
                free.remove(best)
                best.req, best.started = r, False
                taken.add(id(r))
            self._pending = [r for r in self._pending if id(r) not in taken]
            self.stats.queue_depth(len(self._pending))

    def _release(self, slot: Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
        with self._cond:
            slot.req, slot.sampler, slot.last, slot.todo = None, None, None, []
            slot.started, slot.last_used = False, time.perf_counter()

    def _fail(self, slot: Slot, e: Exception, drop_kv: bool = True) -> None:
        r = slot.req
        if r is not None and not r.done:
            r.done = True
            r.emit(_error(e))
        if drop_kv:
            slot.tokens = []  # its cells may be half written: dropped at the slot's next use
        self._release(slot)

    def _start(self, slot: Slot) -> None:
        """Load the adapter, keep the cached prefix this prompt shares (drop the rest), make the sampler."""
        r = slot.req
        assert r is not None
        slot.started = True
        if r.adapter is not None:
            self._ensure_loaded(r.adapter)
        ids = r.prompt_ids
        hit = min(slot.cached_prefix(ids) if slot.adapter == r.adapter else 0, len(ids) - 1)
        if not self.ctx.seq_rm(slot.seq, hit, -1):
            self.ctx.seq_rm(slot.seq)
            hit = 0
        slot.tokens, slot.todo, slot.adapter, slot.last = ids[:hit], ids[hit:], r.adapter, None
        if hit >= 8:
            self.prefix_hits += 1
        else:
            self.prefix_misses += 1
        self.stats.prefix_lookup(hit >= 8, hit)
        greedy = r.temperature <= 0
        slot.sampler = Sampler(self.native, temperature=0.0 if greedy else r.temperature,
                               top_p=1.0 if greedy else r.top_p, grammar=getattr(r.constraint, "grammar", None),
                               seed=r.seed)

    def _step(self, active: list[Slot]) -> None:
        """One step: every active sequence advances by one token (or one prefill chunk), one llama_decode per
        adapter in use; finished and cancelled requests leave, freeing their slots for the next admission."""
        live: list[Slot] = []
        for s in active:
            r = s.req
            assert r is not None
            if r.cancelled.is_set() and not r.done:
                r.done, r.finish_reason = True, "cancelled"
                self.stats.finished(r, len(r.ids), time.perf_counter() - r.created)
            if r.done:
                self._release(s)
                continue
            if not s.started:
                try:
                    self._start(s)
                except Exception as e:  # one bad request fails alone
                    self._fail(s, e, drop_kv=True)
                    continue
            live.append(s)
        if not live:
            return
        self.batches_run += 1
        groups: dict[str | None, list[Slot]] = {}
        for s in live:
            groups.setdefault(s.adapter, []).append(s)
        name = self._turn(groups)
        self.stats.batch(len(groups[name]), 1)
        self._decode_group(name, groups[name])

    def _turn(self, groups: dict[str | None, list[Slot]]) -> str | None:
        """The adapter whose sequences this step decodes. Alone, it decodes every step. When several adapters are
        in use, each gets a turn of `adapter_turn_steps` steps, in rotation: a switch costs ~10 ms (module doc), so
        switching at every step (k-1 switches per step) made 4 adapters x 2 streams slower than the old per-slot
        engine (bench/results/serve.md); turns pay one switch per turn instead."""
        current = self.ctx.adapter
        if len(groups) == 1:
            self._turn_left = self.adapter_turn_steps
            return next(iter(groups))
        if current in groups and self._turn_left > 0:
            self._turn_left -= 1
            return current
        order = sorted(groups, key=lambda n: "" if n is None else f"~{n}")  # the base first, then by name
        nxt = order[(order.index(current) + 1) % len(order)] if current in order else order[0]
        self._turn_left = self.adapter_turn_steps - 1
        return nxt

    def _decode_group(self, name: str | None, group: list[Slot]) -> None:
        """One llama_decode for the group's sequences: one token each for those decoding, then prompt chunks for
        those prefilling, up to n_batch tokens in all; then a token is sampled for every sequence with logits."""
        plan: list[tuple[Slot, Entry]] = []
        budget = self.ctx.n_batch
        for s in group:
            if not s.todo and s.last is not None:
                plan.append((s, Entry(s.seq, [s.last], len(s.tokens), True)))
                budget -= 1
        for s in group:
            if s.todo and budget > 0:
                chunk = s.todo[:budget]
                plan.append((s, Entry(s.seq, chunk, len(s.tokens), len(chunk) == len(s.todo))))
                budget -= len(chunk)
        if not plan:
            return
        try:
            self.ctx.set_adapter(name)
            idx = self.ctx.decode([e for _, e in plan])
        except Exception as e:
            for s, _ in plan:
                self._fail(s, e)
            return
        for (s, e), i in zip(plan, idx, strict=True):
            r = s.req
            assert r is not None
            s.tokens.extend(e.tokens)
            s.todo = s.todo[len(e.tokens):] if s.todo else []
            if i is None:
                continue
            try:
                assert s.sampler is not None
                tok = s.sampler.sample(self.ctx, i)
                self._advance(r, tok)
            except Exception as ex:
                self._fail(s, ex, drop_kv=False)
                continue
            if r.done:
                self._release(s)
            else:
                s.last = tok

    def stop(self) -> None:
        super().stop()
        for s in self.slots:
            if s.req is not None and not s.req.done:
                s.req.done = True
                s.req.emit(_error(TailorError("server shutting down")))
            if s.sampler is not None:
                s.sampler.close()
            s.req = s.sampler = None
        self.close()

    def close(self) -> None:
        """Free llama.cpp's memory now (samplers, context, adapters, model): left to garbage collection at
        interpreter exit, finalizers would run after the bindings are torn down."""
        if self._closed:
            return
        self._closed = True
        for s in self.slots:
            if s.sampler is not None:
                with contextlib.suppress(Exception):
                    s.sampler.close()
                s.sampler = None
        with contextlib.suppress(Exception):
            self.ctx.close()
        with contextlib.suppress(Exception):
            self.native.close()


def _error(e: Exception) -> Any:
    from llmtailor.serve.engine import Event

    return Event("error", error=e)
