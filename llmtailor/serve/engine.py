"""The generation engine: one base model, many PEFT adapters, requests batched as they arrive.

A single worker thread owns the model. Requests queue up; the worker takes the oldest, waits a few
milliseconds for others that arrived together, and decodes all of them with the same sampling settings in
one batched `model.generate` call. When the batch mixes adapters, PEFT's mixed-adapter inference
(`adapter_names=`) runs them in the same forward passes; adapters load on first use with `load_adapter`
and the least recently used are deleted, all without reloading the base. DoRA adapters are the exception:
PEFT recomputes DoRA's weight norms at every forward, so each one is merged into its own copy of the base
(`merge_and_unload`) on first use and its requests run as a plain forward in batches of their own; the
merged copies count against the same LRU budget. Tokens stream back to each request as they are produced,
and a request whose client went away stops being decoded at the next step.

Two optional per-request additions: a grammar `constraint` (structured output, see structured.py) masks that
row's logits at every step, and a `prefix_len` hint marks the shared head of the prompt (system prompt, RAG
template) whose KV cache is computed once per adapter and reused by later requests (prefix cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError

BASE = "__base__"  # PEFT's name for "no adapter" in mixed-adapter batches


@dataclass
class Event:
    """What the worker sends back: a text delta, the end (with finish reason), or an error."""

    kind: str  # "delta" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Exception | None = None


@dataclass
class GenRequest:
    """One completion to produce."""

    prompt_ids: list[int]
    max_tokens: int
    adapter: str | None = None  # engine adapter name (see Engine.add_adapter) or None for the base
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    label: str = ""  # model name as the client asked for it (metrics)
    constraint: Any = None  # structured.Constraint: grammar the answer must follow
    prefix_len: int = 0  # the first prefix_len prompt ids are a shared prefix worth caching
    emit: Callable[[Event], None] = lambda ev: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    # decoding state, owned by the worker
    ids: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    finish_reason: str | None = None
    first_token_at: float | None = None

    @property
    def sampling_key(self) -> tuple:
        return ("greedy",) if self.temperature <= 0 else ("sample", round(self.temperature, 4), round(self.top_p, 4))

    def cancel(self) -> None:
        self.cancelled.set()


class EngineStats:
    """Hooks for metrics (the server passes Prometheus-backed ones); no-ops by default."""

    def queue_depth(self, n: int) -> None: ...
    def batch(self, size: int, adapters: int) -> None: ...
    def first_token(self, req: GenRequest, seconds: float) -> None: ...
    def finished(self, req: GenRequest, tokens: int, seconds: float) -> None: ...
    def adapter_loaded(self, name: str, seconds: float) -> None: ...
    def prefix_lookup(self, hit: bool, tokens: int) -> None: ...


class Engine:
    """Owns the model; thread-safe `submit`, async `stream`, blocking `complete`."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 16, batch_wait_ms: float = 8.0,
                 max_model_len: int | None = None, max_loaded_adapters: int = 8, mixed_adapters: bool = True,
                 stats: EngineStats | None = None, prefix_cache_size: int = 16, prefix_min_tokens: int = 8,
                 merge_dora: bool = True):
        self.model = model
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

    def _ensure_loaded(self, name: str) -> None:
        """Load (or touch) an adapter inside the worker thread, evicting the least recently used."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        from peft import PeftModel

        t0 = time.perf_counter()
        path = self._paths[name]
        while len(self._loaded) >= self.max_loaded_adapters:
            self._evict(next(iter(self._loaded)))
        if self._is_merged(name):
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
            self._pending.append(req)
            self.stats.queue_depth(len(self._pending))
            self._cond.notify()
        return req

    async def stream(self, req: GenRequest) -> AsyncIterator[Event]:
        """Submit and yield events; if the consumer stops iterating (client gone), the request is cancelled."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()
        req.emit = lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev)
        self.submit(req)
        try:
            while True:
                ev = await q.get()
                yield ev
                if ev.kind in ("done", "error"):
                    return
        finally:
            req.cancel()

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
    def _take_batch(self) -> list[GenRequest]:
        with self._cond:
            while self._running and not self._pending:
                self._cond.wait(timeout=0.5)
            if not self._running:
                return []
            # Requests arriving together share the batch: wait briefly for the rest of the burst.
            deadline = time.perf_counter() + self.batch_wait
            while len(self._pending) < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            self._pending = [r for r in self._pending if not r.cancelled.is_set()]
            if not self._pending:
                return []
            key = self._pending[0].sampling_key
            first_adapter = self._pending[0].adapter
            batch, rest = [], []
            adapters: set[str] = set()
            for r in self._pending:
                same = r.sampling_key == key and (self._can_mix(r.adapter, first_adapter))
                # Every adapter of a batch must be loaded at once: no more distinct ones than the LRU holds.
                fits = r.adapter is None or r.adapter in adapters or len(adapters) < self.max_loaded_adapters
                if same and fits and len(batch) < self.max_batch_size:
                    batch.append(r)
                    adapters.update([r.adapter] if r.adapter is not None else [])
                else:
                    rest.append(r)
            self._pending = rest
            self.stats.queue_depth(len(rest))
            return batch

    def _shared_prefix(self, batch: list[GenRequest]) -> list[int] | None:
        """The prefix every request of a single-adapter batch declared and shares (None: no prefix caching)."""
        if self.prefix_cache_size <= 0:
            return None
        first = batch[0]
        # Keep at least one token outside the prefix: generate needs something to run on.
        n = min(first.prefix_len, min(len(r.prompt_ids) for r in batch) - 1)
        if n < self.prefix_min_tokens:
            return None
        head = first.prompt_ids[:n]
        if any(r.prefix_len < n or r.prompt_ids[:n] != head for r in batch[1:]):
            return None
        return head

    def _prefix_kv(self, model: Any, adapter: str | None, prefix: list[int], rows: int) -> Any:
        """A fresh copy of the prefix's KV cache for `rows` rows; computed (one forward pass) on a miss."""
        import torch
        from transformers import DynamicCache

        key = (adapter, tuple(prefix))
        cached = self._prefixes.get(key)
        if cached is not None:
            self._prefixes.move_to_end(key)
            self.prefix_hits += 1
            self.stats.prefix_lookup(True, len(prefix))
        else:
            self.prefix_misses += 1
            self.stats.prefix_lookup(False, len(prefix))
            cached = DynamicCache()
            x = torch.tensor([prefix], dtype=torch.long, device=self.device)
            model(input_ids=x, attention_mask=torch.ones_like(x), past_key_values=cached, use_cache=True)
            self._prefixes[key] = cached
            while len(self._prefixes) > self.prefix_cache_size:
                self._prefixes.popitem(last=False)
        kv = copy.deepcopy(cached)  # generate appends to the cache it is given
        if rows > 1:
            kv.batch_repeat_interleave(rows)
        return kv

    def clear_prefix_cache(self) -> None:
        self._prefixes.clear()

    def _can_mix(self, a: str | None, b: str | None) -> bool:
        # DoRA adapters cannot run in PEFT mixed batches: they batch only with requests for the same adapter.
        if a == b:
            return True
        return self.mixed_adapters and a not in self._dora and b not in self._dora

    def _loop(self) -> None:
        while self._running:
            batch = self._take_batch()
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as e:  # a failed batch fails its requests, never the server
                for r in batch:
                    if not r.done:
                        r.done = True
                        r.emit(Event("error", error=e))

    def _run(self, batch: list[GenRequest]) -> None:
        for n in dict.fromkeys(r.adapter for r in batch if r.adapter is not None):
            self._ensure_loaded(n)
        for group in self._sub_batches(batch):
            self._run_group(group)

    def _sub_batches(self, batch: list[GenRequest]) -> list[list[GenRequest]]:
        """One sub-batch per merged DoRA adapter (it runs on its own model copy), one for base and LoRA requests.

        The batcher already keeps DoRA requests apart; this keeps answers right even when it could not
        (an adapter re-registered as DoRA while its requests were queued).
        """
        groups: dict[str | None, list[GenRequest]] = {}
        for r in batch:
            groups.setdefault(r.adapter if r.adapter in self._merged else None, []).append(r)
        return list(groups.values())

    def _run_group(self, batch: list[GenRequest]) -> None:
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        names = [r.adapter for r in batch]
        distinct = set(names)
        kwargs: dict[str, Any] = {}
        ctx: Any = contextlib.nullcontext()
        model = self.model
        if names[0] in self._merged:  # a merged DoRA adapter: the plain forward of its own copy
            model = self._merged[names[0]]
        elif len(distinct) > 1:
            kwargs["adapter_names"] = [n if n is not None else BASE for n in names]
        elif names[0] is not None:
            model.set_adapter(names[0])
        elif hasattr(model, "disable_adapter"):
            ctx = model.disable_adapter()
        self.batches_run += 1
        self.stats.batch(len(batch), len(distinct))

        prefix = self._shared_prefix(batch) if len(distinct) == 1 else None
        p = len(prefix) if prefix else 0
        # Layout: [shared prefix][left padding][rest of each prompt]. Without a prefix this is plain left padding;
        # with one, the prefix's cached KV sits in the same columns for every row (positions follow the mask).
        width = p + max(len(r.prompt_ids) - p for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            if p:
                input_ids[row, :p] = torch.tensor(prefix, dtype=torch.long)
                attention[row, :p] = 1
            rest = r.prompt_ids[p:]
            input_ids[row, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            attention[row, width - len(rest):] = 1
        engine = self

        class Streamer(BaseStreamer):
            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first hands over the prompt itself
                    self.prompt_seen = True
                    return
                for r, tok in zip(batch, value.view(-1).tolist(), strict=True):
                    if not r.done:
                        engine._advance(r, int(tok))

            def end(self) -> None:
                pass

        class Grammar(LogitsProcessor):
            def __call__(self, ids: Any, scores: Any) -> Any:
                for row, r in enumerate(batch):
                    if r.constraint is not None and not r.done:
                        r.constraint.mask(scores[row], r.max_tokens - len(r.ids))
                return scores

        class Stop(StoppingCriteria):
            def __call__(self, ids: Any, scores: Any, **kw: Any) -> Any:
                flags = []
                for r in batch:
                    if not r.done and r.cancelled.is_set():
                        r.done, r.finish_reason = True, "cancelled"
                    flags.append(r.done)
                return torch.tensor(flags, dtype=torch.bool, device=ids.device)

        sample = batch[0].temperature > 0
        gen_kwargs: dict[str, Any] = {"do_sample": sample}
        if sample:
            gen_kwargs.update(temperature=batch[0].temperature, top_p=batch[0].top_p, top_k=0)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if any(r.constraint is not None for r in batch):
            gen_kwargs["logits_processor"] = LogitsProcessorList([Grammar()])
        with torch.inference_mode(), ctx:
            if p:
                gen_kwargs["past_key_values"] = self._prefix_kv(model, names[0], prefix, len(batch))
            model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=max(r.max_tokens for r in batch),
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids,
                streamer=Streamer(),
                stopping_criteria=StoppingCriteriaList([Stop()]),
                **gen_kwargs,
                **kwargs,
            )
        for r in batch:
            if not r.done:  # generate ended without our criteria firing (should not happen): treat as length
                self._finish(r, "length")
            elif r.finish_reason == "cancelled":
                self.stats.finished(r, len(r.ids), time.perf_counter() - r.created)

    def _advance(self, r: GenRequest, tok: int) -> None:
        """One new token for one request: emit the text that became final, or finish it."""
        now = time.perf_counter()
        if r.cancelled.is_set():
            r.done, r.finish_reason = True, "cancelled"
            return
        if r.first_token_at is None:
            r.first_token_at = now
            self.stats.first_token(r, now - r.created)
        if tok in self.eos_ids:
            self._flush(r, final=True)
            self._finish(r, "stop")
            return
        if r.constraint is not None and not r.constraint.accept(tok):
            self._flush(r, final=True)
            self._finish(r, "stop")  # cannot happen with the mask applied; never emit an off-grammar token
            return
        r.ids.append(tok)
        text = self.tokenizer.decode(r.ids, skip_special_tokens=True)
        for s in r.stop:
            at = text.find(s, max(0, len(r.sent) - len(s)))
            if at != -1:
                self._emit_upto(r, text[:at])
                self._finish(r, "stop")
                return
        if len(r.ids) >= r.max_tokens:
            self._emit_upto(r, text)
            done = r.constraint is not None and r.constraint.completed  # a finished JSON document is a stop
            self._finish(r, "stop" if done else "length")
            return
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        hold = _stop_prefix_len(text, r.stop)
        self._emit_upto(r, text[: len(text) - hold] if hold else text)

    def _flush(self, r: GenRequest, final: bool) -> None:
        if r.ids:
            self._emit_upto(r, self.tokenizer.decode(r.ids, skip_special_tokens=True))

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

    def _finish(self, r: GenRequest, reason: str) -> None:
        r.done, r.finish_reason = True, reason
        seconds = time.perf_counter() - r.created
        self.stats.finished(r, len(r.ids), seconds)
        r.emit(Event("done", finish_reason=reason, prompt_tokens=len(r.prompt_ids),
                     completion_tokens=len(r.ids)))


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
