"""Continuous batching for the transformers engine: the running batch ("lane") and its KV cache.

A lane is a set of requests decoded together on one model: a transformers `DynamicCache` holding every row's keys
and values, a 2D attention mask over the cache's columns (0 where a row has padding), each row's next position id
and the token it feeds next. Rows are right-aligned: the newest column is the same for all of them. New requests are
prefilled on their own (a cache of their own, left-padded among themselves) and then joined: both caches are padded
on the left to the longer one and concatenated along the batch. Finished rows are dropped from the cache, and columns
that have become padding for every remaining row are cut off. Everything follows from the mask and the position ids,
so a row decodes as it would alone (left padding, as in `generate`).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any


def _mergeable_types() -> tuple[type, ...]:
    """Layer types whose keys/values are [batch, heads, columns, dim] tensors aligned on the newest column: these can
    be padded on the left and concatenated. Other layers (recurrent state, indexers) make a lane accept newcomers
    only when it is empty. (Imported lazily: importing the engine must not import transformers.)"""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return DynamicLayer, DynamicSlidingWindowLayer


def new_cache(model: Any) -> Any:
    """An empty DynamicCache laid out for the model (sliding-window layers where the config has them)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except (TypeError, AttributeError, ValueError):  # pragma: no cover - configs DynamicCache cannot read
        return DynamicCache()


def mergeable(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    kinds = _mergeable_types()
    return bool(layers) and all(type(layer) in kinds for layer in layers)



def _pad_left(t: Any, n: int, dim: int) -> Any:
    """Pad tensor t with zeros on the left of `dim` up to length n."""
    import torch

    missing = n - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(parts: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Join (cache, mask) pairs along the batch: left-pad every layer (and mask) to the longest, concatenate.

    Works in place on the first cache and returns it with the joined mask."""
    import torch

    caches = [c for c, _ in parts]
    first = caches[0]
    for i, layer in enumerate(first.layers):
        group = [c.layers[i] for c in caches]
        ready = [g.is_initialized and g.keys is not None and g.keys.numel() > 0 for g in group]
        if not any(ready):
            continue
        if not all(ready):
            raise RuntimeError("cannot join KV caches: a layer is filled in one and empty in another")
        n = max(g.keys.shape[-2] for g in group)
        layer.keys = torch.cat([_pad_left(g.keys, n, 2) for g in group])
        layer.values = torch.cat([_pad_left(g.values, n, 2) for g in group])
        if hasattr(layer, "cumulative_length"):  # sliding window: columns seen, the same for all rows now
            layer.cumulative_length = max(g.cumulative_length for g in group)
    width = max(m.shape[1] for _, m in parts)
    mask = torch.cat([_pad_left(m, width, 1) for _, m in parts])
    return first, mask


def select_rows(cache: Any, mask: Any, keep: list[int]) -> tuple[Any, Any]:
    """Keep only the given rows; then cut leading columns that are padding for every row left."""
    import torch

    idx = torch.tensor(keep, dtype=torch.long, device=mask.device)
    cache.batch_select_indices(idx)
    mask = mask.index_select(0, idx)
    live = mask.any(0)
    cut = int(live.long().argmax()) if bool(live.any()) else 0
    if cut and mergeable(cache):
        width = mask.shape[1] - cut
        for layer in cache.layers:
            if not (layer.is_initialized and layer.keys is not None and layer.keys.numel()):
                continue
            n = layer.keys.shape[-2]  # all columns (full attention), or the last ones (sliding window)
            if n > width:
                layer.keys = layer.keys[:, :, n - width:]
                layer.values = layer.values[:, :, n - width:]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length -= cut
        mask = mask[:, cut:]
    return cache, mask


def last_position(ids: Any) -> Any:
    """`logits_to_keep` for a forward over `ids`: only the last position's logits.

    One new token per row (a decoding step): 1. A prefill: the index of the last column as a tensor, so the model
    gathers that column into a fresh, densely laid out [rows, 1, hidden] tensor for the LM head. The slice that
    `logits_to_keep=1` takes instead keeps the prompt's row stride, and a bf16 LM head whose weight does not require
    grad (PEFT freezes the base as soon as one adapter is loaded) multiplies such a view through a slow path on CPU:
    166 ms instead of 7 for one row of SmolLM2-135M, 1.2 s instead of 8 ms for eight, measured on this engine; time to
    first token over HTTP rose from 0.16 s to 1.3 s for 8 streams once any adapter had been used."""
    width = ids.shape[1]
    if width == 1:
        return 1
    import torch

    return torch.tensor([width - 1], device=ids.device)


def forward_names(model: Any) -> tuple[str, bool]:
    """The model's keyword for the KV cache (`cache` from transformers 5.24, `past_key_values` before) and whether
    its forward takes `logits_to_keep`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def choose(scores: Any, temperatures: list[float], top_ps: list[float],
           generators: list[Any] | None = None) -> list[int]:
    """Next token per row: argmax where temperature <= 0, else sampled after temperature and nucleus (top-p)
    filtering, in the order and with the rule transformers' warpers use. A row with its own torch.Generator (a
    request with a seed) draws from it, so its answer does not depend on which other requests share the batch."""
    import torch

    greedy = scores.argmax(-1)
    hot = [i for i, t in enumerate(temperatures) if t > 0]
    if not hot:
        return greedy.tolist()
    out = greedy.tolist()
    idx = torch.tensor(hot, dtype=torch.long, device=scores.device)
    s = scores.index_select(0, idx).float()
    s = s / torch.tensor([temperatures[i] for i in hot], dtype=s.dtype, device=s.device).unsqueeze(1)
    ps = [top_ps[i] for i in hot]
    if any(p < 1.0 for p in ps):
        p = torch.tensor(ps, dtype=s.dtype, device=s.device).unsqueeze(1)
        sorted_logits, sorted_idx = torch.sort(s, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = (cum <= (1 - p)) & (p < 1.0)
        drop[:, -1] = False  # keep at least the most likely token
        s = s.masked_fill(drop.scatter(1, sorted_idx, drop), float("-inf"))
    probs = s.softmax(-1)
    gens = [generators[i] for i in hot] if generators is not None else [None] * len(hot)
    if any(g is not None for g in gens):
        picked = [int(torch.multinomial(probs[j], 1, generator=g)) for j, g in enumerate(gens)]
    else:
        picked = torch.multinomial(probs, num_samples=1).squeeze(1).tolist()
    for i, tok in zip(hot, picked, strict=True):
        out[i] = int(tok)
    return out


class Detok:
    """Incremental detokenization: the text of a growing id list without decoding it whole at every token.

    A short window (from `start`) is decoded; the part after `read` is new. The window only moves on when it
    decodes to complete characters, so the result equals decoding all ids at once (the engine checks that once
    at the end of every request).
    """

    __slots__ = ("_decode", "committed", "start", "read", "window_text")

    def __init__(self, tokenizer: Any):
        self._decode = tokenizer.decode
        self.committed = ""  # text of ids[:read]
        self.start = 0
        self.read = 0
        self.window_text = ""  # text of ids[start:read]

    def decode(self, ids: list[int]) -> str:
        return self._decode(ids, skip_special_tokens=True)

    def text(self, ids: list[int]) -> str:
        """The text of all ids (possibly ending in U+FFFD while a character is incomplete)."""
        new = self.decode(ids[self.start:])
        if not new.startswith(self.window_text):  # the tokenizer rewrote the window: decode everything
            return self.decode(ids)
        view = self.committed + new[len(self.window_text):]
        if len(new) > len(self.window_text) and not new.endswith("\ufffd"):
            self.committed = view
            self.start, self.read = self.read, len(ids)
            self.window_text = self.decode(ids[self.start:self.read])
        return view


class Lane:
    """Requests decoded together on one model (the base with LoRA adapters mixed, or one merged DoRA copy)."""

    def __init__(self, key: Any):
        self.key = key
        self.rows: list[Any] = []  # GenRequests
        self.cache: Any = None
        self.mask: Any = None  # [rows, columns] long
        self.pos: Any = None  # [rows] position id of the token each row feeds next
        self.last: Any = None  # [rows] the token each row feeds next
        self.joinable = True

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: list[Any], cache: Any, mask: Any, pos: Any, last: Any) -> None:
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask, self.pos, self.last = rows, cache, mask, pos, last
            return
        self.cache, self.mask = merge([(self.cache, self.mask), (cache, mask)])
        self.rows = self.rows + rows
        self.pos = torch.cat([self.pos, pos])
        self.last = torch.cat([self.last, last])

    def keep(self, keep: list[int]) -> None:
        """Drop every row not listed (finished or cancelled)."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.pos = self.last = None
            return
        self.cache, self.mask = select_rows(self.cache, self.mask, keep)
        self.pos = self.pos[keep]
        self.last = self.last[keep]


def plain_base(peft_model: Any) -> Any:
    """The base model of a PeftModel as plain transformers modules: every PEFT wrapper (a LoRA layer around a Linear,
    a modules-to-save copy) replaced by the module it wraps. Nothing is copied but the containers on the way down to a
    wrapper (the same weight tensors; subtrees without wrappers are the model's own modules), so it costs no memory
    and stays in step with the weights, but not with the set of wrappers: it must be rebuilt after an adapter loads
    or leaves.

    A base request run through the PeftModel with its adapter layers disabled passes every wrapped Linear through
    PEFT's Python forward (argument checks, adapter bookkeeping): 210 extra module calls per token on SmolLM2-135M
    with all-linear adapters, about 6 % slower single-stream decoding than the plain model, measured on this engine.
    None when a LoRA layer is merged into its base weights (the wrapped layer would then not be the base).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        from peft.utils.other import AuxiliaryTrainingWrapper as Aux
    except ImportError:  # pragma: no cover - PEFT before 0.15
        from peft.utils.other import ModulesToSaveWrapper as Aux

    class Merged(Exception):
        pass

    def unwrap(m: Any) -> Any:
        while True:
            if isinstance(m, BaseTunerLayer):
                if m.merged:
                    raise Merged
                m = m.get_base_layer()
            elif isinstance(m, Aux):
                m = m.original_module
            else:
                return m

    def clone(m: Any) -> Any:
        m = unwrap(m)
        kids = m._modules
        new = {k: clone(c) if c is not None else None for k, c in kids.items()}
        if all(new[k] is kids[k] for k in kids):
            return m  # nothing wrapped below: the module itself
        out = copy.copy(m)  # shares parameters, buffers and hooks; only the children differ
        out._modules = new
        return out

    try:
        return clone(peft_model.get_base_model())
    except Merged:
        return None
