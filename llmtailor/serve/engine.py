"""The generation engine: one base model, many PEFT adapters, continuous batching.

A single worker thread owns the model and runs its own decoding loop over a transformers KV cache (batching.py).
Requests that arrive together are prefilled together; between two decoding steps, requests that arrived meanwhile
are prefilled and join the running batch, and finished ones leave it, so nobody waits for a whole batch to end.
Every row has its own sampling settings (greedy, or temperature / top-p), stop strings and token budget. When the
batch mixes adapters, PEFT's mixed-adapter inference (`adapter_names=`) runs them in the same forward passes;
adapters load on first use with `load_adapter` and the least recently used idle ones are deleted, all without
reloading the base. DoRA adapters are the exception: PEFT recomputes DoRA's weight norms at every forward, so each
one is merged into its own copy of the base (`merge_and_unload`) on first use and its requests run as a plain
forward in a batch ("lane") of their own; the merged copies count against the same LRU budget. Tokens stream back
to each request as they are produced (decoded incrementally), and a request whose client went away leaves the batch
at the next step. The model runs in the precision it was loaded in (bf16 where the CPU has native BF16, see
models.load_model), under `torch.inference_mode()`.

Waiting requests sit in one bounded queue (`max_queue`: a full queue raises QueueFull, which the server answers with
503) and are admitted round-robin across their owners (API keys, `fair_order`), so one client cannot starve the rest.
Events reach the event loop through an EventStream per request, which batches whatever arrived between two wake-ups;
the events of one forward pass wake the loop once for all its rows (`deferred_wakeups`). A batch without adapters
runs the base's own modules even when adapters are loaded (`plain_base`: PEFT's wrappers cost ~6 % per token).

Two optional per-request additions: a grammar `constraint` (structured output, see structured.py) masks that
row's logits at every step, and a `prefix_len` hint marks the shared head of the prompt (system prompt, RAG
template) whose KV cache is computed once per adapter and reused by later requests (prefix cache).
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.serve.batching import (
    Detok,
    Lane,
    choose,
    forward_names,
    last_position,
    mergeable,
    new_cache,
    plain_base,
)
from llmtailor.serve.lean import LeanDecoder, supported_cache, unsupported

# The request types live in requests.py; engine.py re-exports them, where engines and the server import them from.
from llmtailor.serve.requests import (  # noqa: F401
    EngineStats,
    Event,
    EventStream,
    GenRequest,
    QueueFull,
    deferred_wakeups,
    fair_order,
)

BASE = "__base__"  # PEFT's name for "no adapter" in mixed-adapter batches


class Engine:
    """Owns the model; thread-safe `submit`, async `stream`, blocking `complete`."""

    stream_interval = 0.0  # seconds a stream's deltas may wait between two hand-overs to the event loop (EventStream)

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 16, batch_wait_ms: float = 8.0,
                 max_model_len: int | None = None, max_loaded_adapters: int = 8, mixed_adapters: bool = True,
                 stats: EngineStats | None = None, prefix_cache_size: int = 16, prefix_min_tokens: int = 8,
                 merge_dora: bool = True, max_queue: int = 256, stream_interval_ms: float = 0.0,
                 lean_decode: bool = True):
        self.model = model
        self.lean_decode = lean_decode
        self._lean: dict[int, tuple[Any, Any]] = {}  # id(model) -> (model, LeanDecoder or None): see _lean_for
        self._lora_tables: dict[str, Any] = {}  # adapter -> lean_lora.table (laid out for the lean step) or reason
        self._lora_stack: Any = None  # lean_lora.LoraBatch of the last batch's set of adapters
        self.stream_interval = stream_interval_ms / 1000  # see EventStream: deltas held back between hand-overs
        self.max_queue = max_queue
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        cfg_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_model_len = int(max_model_len or cfg_len or 2048)
        self.max_loaded_adapters = max_loaded_adapters
        self.mixed_adapters = mixed_adapters
        self.stats = stats or EngineStats()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self._paths: dict[str, Path] = {}  # adapter name -> folder (known, maybe not loaded)
        self._loaded: OrderedDict[str, Path] = OrderedDict()  # LRU of loaded adapters (PEFT or merged)
        self._dora: set[str] = set()  # adapters whose config says use_dora (known before they load)
        self.merge_dora = merge_dora
        self._merged: dict[str, Any] = {}  # DoRA adapter -> its own copy of the base with the adapter merged in
        self._pending: list[GenRequest] = []
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.adapter_loads = 0
        # Prefix cache: (adapter, prefix ids) -> KV cache of that prefix (one row), least recently used evicted.
        self.prefix_cache_size = prefix_cache_size
        self.prefix_min_tokens = prefix_min_tokens
        self._prefixes: OrderedDict[tuple, Any] = OrderedDict()
        self.prefix_hits = 0
        self.prefix_misses = 0
        self._lanes: dict[str | None, Lane] = {}  # running batches, by lane key (see _lane_key)
        self._fwd_names: dict[int, tuple[str, bool]] = {}
        self._lora_on: bool | None = None  # adapter layers of the PeftModel enabled? None: unknown (just loaded)
        self._plain: Any = None  # the PeftModel's base without PEFT's wrappers (plain_base); None: not built yet
        self._structured: Any = None
        self._structured_lock = threading.Lock()

    def structured(self) -> Any:
        """The grammar compiler for this tokenizer (built on first use: it indexes the vocabulary once)."""
        with self._structured_lock:
            if self._structured is None:
                from llmtailor.serve.structured import StructuredOutput

                self._structured = StructuredOutput.for_model(self.model, self.tokenizer, self.eos_ids)
            return self._structured

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._loop, name="llmtailor-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for req in self._drain():
            req.emit(Event("error", error=TailorError("server shutting down")))

    def _drain(self) -> list[GenRequest]:
        with self._cond:
            out, self._pending = self._pending, []
            return out

    # ---- adapters --------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: Path) -> None:
        """Make an adapter known; its weights load on the first request that uses it."""
        path = Path(path)
        if not (path / "adapter_config.json").exists():
            raise TailorError(f"{path}: no adapter_config.json; not a PEFT adapter folder")
        # Known before loading, so the batcher never puts a DoRA request in a mixed batch.
        if _uses_dora(path):
            self._dora.add(name)
        else:
            self._dora.discard(name)
        self._paths[name] = path

    def has_adapter(self, name: str) -> bool:
        return name in self._paths

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    @property
    def merged_adapters(self) -> list[str]:
        """DoRA adapters currently served from a merged copy of the base."""
        return list(self._merged)

    def _ensure_loaded(self, name: str, protect: set[str] | frozenset[str] = frozenset()) -> None:
        """Load (or touch) an adapter inside the worker thread, evicting the least recently used one that no running
        request (and nothing in `protect`) needs."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        from peft import PeftModel

        t0 = time.perf_counter()
        path = self._paths[name]
        busy = self._in_use() | set(protect)
        while len(self._loaded) >= self.max_loaded_adapters:
            victim = next((n for n in self._loaded if n not in busy), None)
            if victim is None:
                raise TailorError(f"cannot load adapter {name!r}: all {len(self._loaded)} loaded adapters are in use")
            self._evict(victim)
        self._lora_on = None  # loading adds layers in their default (enabled) state
        self._plain = None  # and may wrap more layers: the plain view is rebuilt on its next use
        self._lora_tables.pop(name, None)
        self._lora_stack = None
        if self._is_merged(name):
            if isinstance(self.model, PeftModel):
                self._lora_layers(self.model, True)  # the copy starts from the canonical, enabled state
            self._merged[name] = self._merge(name, path)
        elif not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()
        self._loaded[name] = path
        self.adapter_loads += 1
        self.stats.adapter_loaded(name, time.perf_counter() - t0)

    def _evict(self, name: str) -> None:
        """Forget an adapter: drop its merged copy or delete it from the PeftModel, and its cached prefixes."""
        self._loaded.pop(name, None)
        if self._merged.pop(name, None) is None:
            self.model.delete_adapter(name)
            self._lora_on = None
            self._plain = None
            self._lora_tables.pop(name, None)
            self._lora_stack = None
        for k in [k for k in self._prefixes if k[0] == name]:
            del self._prefixes[k]

    def _is_merged(self, name: str | None) -> bool:
        return self.merge_dora and name in self._dora

    def _merge(self, name: str, path: Path) -> Any:
        """A copy of the base with the DoRA adapter merged in, so its requests run a plain forward.

        The copy is taken from the serving model; if that is already a PeftModel, the other adapters come along
        and `merge_and_unload(adapter_names=[name])` merges only this one and strips the rest.
        """
        from peft import PeftModel

        clone = copy.deepcopy(self.model)
        if isinstance(clone, PeftModel):
            clone.load_adapter(path, adapter_name=name)
            merged = clone.merge_and_unload(adapter_names=[name])
        else:
            merged = PeftModel.from_pretrained(clone, path, adapter_name=name).merge_and_unload()
        return merged.eval()

    # ---- submitting ------------------------------------------------------------------------------
    def check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        if prompt_tokens + max_tokens > self.max_model_len:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )

    def submit(self, req: GenRequest) -> GenRequest:
        if req.adapter is not None and req.adapter not in self._paths:
            raise TailorError(f"unknown adapter {req.adapter!r}")
        self.check_length(len(req.prompt_ids), req.max_tokens)
        if self._thread is None:
            raise TailorError("engine is not running")
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already waiting (serve.max_queue)")
            self._pending.append(req)
            self.stats.queue_depth(len(self._pending))
            self._cond.notify()
        return req

    def stream(self, req: GenRequest) -> EventStream:
        """Submit now and return the request's events, to be read on the running event loop (`async for`, or
        `.batches()`). Submitting here, not at the first read, makes a full queue or a bad request fail before the
        server starts an answer; a consumer that stops reading early cancels the request."""
        events = EventStream(req, asyncio.get_running_loop(), self.stream_interval)
        req.emit = events.put
        self.submit(req)
        return events

    def complete(self, req: GenRequest, timeout: float | None = None) -> tuple[str, Event]:
        """Blocking: the whole text and the final event (for RAG answers and benchmarks)."""
        q: queue.Queue[Event] = queue.Queue()
        req.emit = q.put
        self.submit(req)
        parts = []
        try:
            while True:
                ev = q.get(timeout=timeout)
                if ev.kind == "delta":
                    parts.append(ev.text)
                elif ev.kind == "error":
                    raise ev.error or TailorError("generation failed")
                else:
                    return "".join(parts), ev
        finally:
            req.cancel()

    # ---- the worker ------------------------------------------------------------------------------
    def _lane_key(self, adapter: str | None) -> str | None:
        """The lane a request decodes in: each DoRA adapter (merged copy, or alone through PEFT) has its own, as has
        every adapter when mixing is off; the base and the LoRA adapters share lane None."""
        if adapter is not None and (adapter in self._dora or not self.mixed_adapters):
            return adapter
        return None

    def _lane_model(self, key: str | None) -> Any:
        return self._merged[key] if key is not None and key in self._merged else self.model

    def _in_use(self) -> set[str]:
        return {r.adapter for lane in self._lanes.values() for r in lane.rows if r.adapter is not None}

    def _take(self, wait: bool) -> list[GenRequest]:
        """Queued requests that can start now: room in their lane, their adapter within the loaded budget.
        When idle (`wait`), block for the first request and then wait briefly for the rest of its burst."""
        with self._cond:
            if wait:
                while self._running and not self._pending:
                    self._cond.wait(timeout=0.5)
                deadline = time.perf_counter() + self.batch_wait
                while self._running and len(self._pending) < self.max_batch_size:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(timeout=left)
            if not self._running or not self._pending:
                return []
            room = {k: self.max_batch_size - len(lane) for k, lane in self._lanes.items()}
            needed = self._in_use()
            taken, rest = [], []
            for r in fair_order(self._pending):
                if r.cancelled.is_set():
                    continue
                key = self._lane_key(r.adapter)
                lane = self._lanes.get(key)
                # Every adapter decoding at once must be loaded at once: no more distinct ones than the LRU holds.
                fits = r.adapter is None or r.adapter in needed or len(needed) < self.max_loaded_adapters
                if room.get(key, self.max_batch_size) > 0 and fits and (lane is None or lane.joinable):
                    taken.append(r)
                    room[key] = room.get(key, self.max_batch_size) - 1
                    needed.update([r.adapter] if r.adapter is not None else [])
                else:
                    rest.append(r)
            waiting = {id(r) for r in rest}
            self._pending = [r for r in self._pending if id(r) in waiting]  # arrival order kept
            self.stats.queue_depth(len(rest))
            return taken

    def _loop(self) -> None:
        while self._running:
            taken = self._take(wait=not self._lanes)
            if taken:
                self._start_requests(taken)
            self._step_all()
        for lane in self._lanes.values():
            self._fail(lane.rows, TailorError("server shutting down"))
        self._lanes.clear()

    def _run(self, batch: list[GenRequest]) -> None:
        """Decode these requests to the end in the calling thread (tests; the worker runs the same steps)."""
        self._start_requests([r for r in batch if not r.cancelled.is_set()])
        while self._lanes:
            self._step_all()

    def _fail(self, reqs: list[GenRequest], e: Exception) -> None:
        for r in reqs:  # a failed step fails its requests, never the server
            if not r.done:
                r.done = True
                r.emit(Event("error", error=e))

    def _start_requests(self, reqs: list[GenRequest]) -> None:
        """Load the adapters the requests need, prefill them and join them to their lanes."""
        groups: dict[str | None, list[GenRequest]] = {}
        for r in reqs:
            groups.setdefault(self._lane_key(r.adapter), []).append(r)
        for key, group in groups.items():
            try:
                names = [r.adapter for r in group if r.adapter is not None]
                for n in dict.fromkeys(names):
                    self._ensure_loaded(n, protect=set(names))
                self._prefill(key, group)
            except Exception as e:
                self._fail(group, e)

    def _prefix_of(self, r: GenRequest) -> list[int] | None:
        """The request's declared shared prefix, if worth caching (at least one prompt token stays outside)."""
        n = min(r.prefix_len, len(r.prompt_ids) - 1)
        return r.prompt_ids[:n] if self.prefix_cache_size > 0 and n >= self.prefix_min_tokens else None

    def _prefill(self, key: str | None, reqs: list[GenRequest]) -> None:
        """Prefill new requests (one forward per shared prefix, left-padded), choose their first tokens, join."""
        import torch

        model = self._lane_model(key)
        joinable = mergeable(new_cache(model))
        if key not in self._lanes:
            self.batches_run += 1
        subs: dict[Any, list[GenRequest]] = {}
        for r in reqs:
            head = self._prefix_of(r) if joinable else None  # caches that cannot be joined: one prefill
            subs.setdefault((r.adapter, tuple(head)) if head else None, []).append(r)
        for sub_key, group in subs.items():
            prefix = list(sub_key[1]) if sub_key else []
            p = len(prefix)
            # Layout: [shared prefix][left padding][rest of each prompt]; positions follow the mask.
            width = max(len(r.prompt_ids) - p for r in group)
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), p + width), dtype=torch.long)
            mask[:, :p] = 1
            for i, r in enumerate(group):
                rest = r.prompt_ids[p:]
                ids[i, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
                mask[i, p + width - len(rest):] = 1
            mask = mask.to(self.device)
            positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 0)[:, p:]
            with torch.inference_mode(), deferred_wakeups():  # the group's first tokens: one loop wake-up
                cache = self._prefix_kv(model, group[0].adapter, prefix, len(group)) if p else new_cache(model)
                logits = self._forward(model, [r.adapter for r in group], ids.to(self.device), mask, positions,
                                       cache)
                sub = Lane(key)
                sub.join(group, cache, mask, mask.sum(1), torch.tensor(self._choose(group, logits), device=self.device))
                sub.keep(self._advance_rows(sub.rows, sub.last.tolist()))
            if sub.rows:
                lane = self._lanes.setdefault(key, Lane(key))
                lane.joinable = joinable
                lane.join(sub.rows, sub.cache, sub.mask, sub.pos, sub.last)
                self.stats.batch(len(lane), len({r.adapter for r in lane.rows}))

    def _step_all(self) -> None:
        for key, lane in list(self._lanes.items()):
            try:
                with deferred_wakeups():  # one event-loop wake-up per forward for all the rows it advanced
                    self._step_lane(lane)
            except Exception as e:
                self._fail(lane.rows, e)
                lane.keep([])
            if not lane.rows:
                self._lanes.pop(key, None)

    def _step_lane(self, lane: Lane) -> None:
        """One decoding step for every row of the lane: one forward, one token each; finished rows leave."""
        import torch

        lane.keep([i for i, r in enumerate(lane.rows) if not self._cancelled(r)])
        if not lane.rows:
            return
        with torch.inference_mode():
            mask = torch.cat([lane.mask, lane.mask.new_ones((len(lane), 1))], dim=1)
            logits = self._forward(self._lane_model(lane.key), [r.adapter for r in lane.rows],
                                   lane.last.unsqueeze(1), mask, lane.pos.unsqueeze(1), lane.cache)
            lane.mask, lane.pos = mask, lane.pos + 1
            toks = self._choose(lane.rows, logits)
            lane.last = torch.tensor(toks, device=self.device)
            lane.keep(self._advance_rows(lane.rows, toks))

    def _forward(self, model: Any, names: list[str | None], ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """Logits of the last position of each row, with the rows' adapters active (the lean step where it applies,
        else transformers' forward, adapters mixed through PEFT)."""
        if ids.shape[1] == 1 and self.lean_decode and supported_cache(cache):
            logits = self._lean_forward(model, names, ids, mask, positions, cache)
            if logits is not None:
                return logits
        kwargs: dict[str, Any] = {}
        if model is self.model and _is_peft(model):  # merged DoRA copies and a model without adapters: plain forward
            if len(set(names)) > 1:
                self._lora_layers(model, True)
                kwargs["adapter_names"] = [n if n is not None else BASE for n in names]
            elif names[0] is not None:
                self._lora_layers(model, True)
                if getattr(model, "active_adapter", None) != names[0]:
                    model.set_adapter(names[0])
            else:
                plain = self._plain_base(model)
                if plain is not None:
                    model = plain
                else:
                    self._lora_layers(model, False)
        spec = self._fwd_names.get(id(model))
        if spec is None:
            spec = self._fwd_names[id(model)] = forward_names(model)
        if spec[1]:
            kwargs["logits_to_keep"] = last_position(ids)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{spec[0]: cache}, **kwargs)
        return out.logits[:, -1]

    def _lean_forward(self, model: Any, names: list[str | None], ids: Any, mask: Any, positions: Any,
                      cache: Any) -> Any:
        """A decoding step through the lean path (lean.py, lean_lora.py), or None where it does not apply."""
        peft = model is self.model and _is_peft(model)
        if peft:
            model = self._plain_base(model)  # the base's own modules; LoRA rows are added by the lean step
        lean = self._lean_for(model) if model is not None else None
        if lean is None:
            return None
        lora = None
        if peft and any(n is not None for n in names):
            lora = self._lora_batch(lean, names)
            if lora is None:
                return None
        return lean.step(ids, mask, positions, cache, lora)

    def _lora_batch(self, lean: Any, names: list[str | None]) -> Any:
        """The rows' LoRA adapters stacked for the lean step (lean_lora.LoraBatch), rebuilt only when the set of
        adapters in the batch changes; None when one of them needs PEFT's forward (the reason is kept per adapter)."""
        from llmtailor.serve.lean_lora import lora_batch

        slots = sorted({n for n in names if n is not None}) + ([None] if None in names else [])
        if self._lora_stack is None or self._lora_stack.slots != slots:
            self._lora_stack = lora_batch(self.model, lean, slots, self._lora_tables)
            if self._lora_stack is None:
                return None
        return self._lora_stack.for_rows(names)

    def _lean_for(self, model: Any) -> Any:
        """The lean decoding step for this model (lean.py), or None where transformers' forward must run (another
        architecture, PEFT's wrappers, not on CPU). Built once per model object; the model is kept with it so that
        a new object can never reuse the id of a dropped one."""
        got = self._lean.get(id(model))
        if got is None or got[0] is not model:
            live = {id(m) for m in (self.model, self._plain, *self._merged.values()) if m is not None}
            self._lean = {k: v for k, v in self._lean.items() if k in live}  # views rebuilt or evicted since
            got = self._lean[id(model)] = (model, LeanDecoder(model) if unsupported(model) is None else None)
        return got[1]

    def _plain_base(self, model: Any) -> Any:
        """The base for a batch without adapters: the PeftModel's own modules and weights without PEFT's wrappers
        (plain_base), built once per change of the loaded adapters; None where PEFT's layers must run (merged)."""
        if self._plain is None:
            plain = plain_base(model)
            self._plain = False if plain is None else plain
        return None if self._plain is False else self._plain

    def _lora_layers(self, model: Any, on: bool) -> None:
        """Switch the PeftModel's adapter layers on or off only when the state changes. PEFT's `disable_adapter()`
        context, entered per forward, walks and checks the whole model on entry and exit: on the packaged SmolLM2
        that cost more than the forward itself (a base request with one adapter loaded ran at about half the speed
        of the plain model, bench/results/serve.md); toggling the layers once per change costs nothing per token."""
        if self._lora_on is on:
            return
        if on:
            model.base_model.enable_adapter_layers()
        else:
            model.base_model.disable_adapter_layers()
        self._lora_on = on

    def _choose(self, reqs: list[GenRequest], logits: Any) -> list[int]:
        """Grammar masks first (in place, on float32 scores), then greedy or sampled per row."""
        if all(r.temperature <= 0 and r.constraint is None for r in reqs):
            return logits.argmax(-1).tolist()
        scores = logits.float()
        for i, r in enumerate(reqs):
            if r.constraint is not None:
                r.constraint.mask(scores[i], r.max_tokens - len(r.ids))
        return choose(scores, [r.temperature for r in reqs], [r.top_p for r in reqs],
                      [_generator(r, scores.device) for r in reqs])

    def _prefix_kv(self, model: Any, adapter: str | None, prefix: list[int], rows: int) -> Any:
        """A fresh copy of the prefix's KV cache for `rows` rows; computed (one forward pass) on a miss."""
        import torch

        key = (adapter, tuple(prefix))
        cached = self._prefixes.get(key)
        if cached is not None:
            self._prefixes.move_to_end(key)
            self.prefix_hits += 1
            self.stats.prefix_lookup(True, len(prefix))
        else:
            self.prefix_misses += 1
            self.stats.prefix_lookup(False, len(prefix))
            cached = new_cache(model)
            x = torch.tensor([prefix], dtype=torch.long, device=self.device)
            positions = torch.arange(len(prefix), device=self.device).unsqueeze(0)
            self._forward(model, [adapter], x, torch.ones_like(x), positions, cached)
            self._prefixes[key] = cached
            while len(self._prefixes) > self.prefix_cache_size:
                self._prefixes.popitem(last=False)
        kv = copy.deepcopy(cached)  # decoding appends to the cache it is given
        if rows > 1:
            kv.batch_repeat_interleave(rows)
        return kv

    def clear_prefix_cache(self) -> None:
        self._prefixes.clear()

    def _cancelled(self, r: GenRequest) -> bool:
        if r.cancelled.is_set() and not r.done:
            r.done, r.finish_reason = True, "cancelled"
            self.stats.finished(r, len(r.ids), time.perf_counter() - r.created)
        return r.done

    def _advance_rows(self, reqs: list[GenRequest], toks: list[int]) -> list[int]:
        """Hand each row its new token; the indices of the rows still decoding."""
        keep = []
        for i, (r, tok) in enumerate(zip(reqs, toks, strict=True)):
            self._advance(r, int(tok))
            if not r.done:
                keep.append(i)
        return keep

    def _advance(self, r: GenRequest, tok: int) -> None:
        """One new token for one request: emit the text that became final, or finish it."""
        if self._cancelled(r):
            return
        now = time.perf_counter()
        if r.first_token_at is None:
            r.first_token_at = now
            self.stats.first_token(r, now - r.created)
        if tok in self.eos_ids:
            self._finish(r, "stop")
            return
        if r.constraint is not None and not r.constraint.accept(tok):
            self._finish(r, "stop")  # cannot happen with the mask applied; never emit an off-grammar token
            return
        r.ids.append(tok)
        detok = r.__dict__.get("_detok")  # the request's incremental detokenizer, made on its first token
        if detok is None:
            detok = r.__dict__["_detok"] = Detok(self.tokenizer)
        text = detok.text(r.ids)
        for s in r.stop:
            at = text.find(s, max(0, len(r.sent) - len(s)))
            if at != -1:
                self._emit_upto(r, text[:at])
                self._finish(r, "stop", flush=False)
                return
        if len(r.ids) >= r.max_tokens:
            done = r.constraint is not None and r.constraint.completed  # a finished JSON document is a stop
            self._finish(r, "stop" if done else "length")
            return
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        hold = _stop_prefix_len(text, r.stop)
        self._emit_upto(r, text[: len(text) - hold] if hold else text)

    def _emit_upto(self, r: GenRequest, text: str) -> None:
        if len(text) > len(r.sent) and text.startswith(r.sent):
            delta = text[len(r.sent):]
            r.sent = text
            r.emit(Event("delta", delta))
        elif not text.startswith(r.sent):  # tokenizer changed earlier text (rare): send the corrected tail
            common = len(_common_prefix(text, r.sent))
            r.sent = text
            if text[common:]:
                r.emit(Event("delta", text[common:]))

    def _finish(self, r: GenRequest, reason: str, flush: bool = True) -> None:
        if flush and r.ids:  # the whole answer decoded once: the streamed text ends exactly as a full decode
            self._emit_upto(r, self.tokenizer.decode(r.ids, skip_special_tokens=True))
        r.done, r.finish_reason = True, reason
        seconds = time.perf_counter() - r.created
        self.stats.finished(r, len(r.ids), seconds)
        r.emit(Event("done", finish_reason=reason, prompt_tokens=len(r.prompt_ids),
                     completion_tokens=len(r.ids)))


def _generator(r: GenRequest, device: Any) -> Any:
    """The request's own random generator when it asked for a seed (made once, on its first sampled token)."""
    if r.seed is None or r.temperature <= 0:
        return None
    gen = r.__dict__.get("_generator")
    if gen is None:
        import torch

        gen = r.__dict__["_generator"] = torch.Generator(device=device).manual_seed(int(r.seed) & 0x7FFFFFFFFFFFFFFF)
    return gen


def _is_peft(model: Any) -> bool:
    """A PeftModel, without importing peft for a server that never loaded an adapter."""
    import sys

    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def _uses_dora(path: Path) -> bool:
    import json

    cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    return bool(cfg.get("use_dora"))


class ContextLengthError(TailorError):
    """Prompt plus max_tokens does not fit the model's context."""


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list):
        ids.update(extra)
    return sorted(i for i in ids if i is not None)


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Characters at the end of text that could be the start of a stop string (held back until resolved)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]
