"""LoRA adapters inside the lean decoding step: every row of a batch with its own adapter (or none), in a few batched
matrix products per projection instead of PEFT's per-module Python forward.

PEFT runs a LoRA request through 210 wrapped Linears on SmolLM2-135M, each a Python forward; with several adapters in
one batch (`adapter_names`) it also splits every projection's input by adapter. Here the adapters present in a batch
are stacked once ([adapters, in, rank] and [adapters, rank, out] per layer and projection group, padded to the largest
rank with zeros, the scaling folded into B), every row's low-rank product is computed against every stacked adapter
(rank is small: a few hundred thousand multiply-adds per group), and each row keeps its own adapter's. Rows without an
adapter point at an all-zero slot. The product is added in float32 to the projection's output and rounded once, as
PEFT's single-adapter forward does.

Only plain LoRA on the seven Llama projections is taken here; DoRA and other variants, biases in the adapter,
adapted embeddings or LM head and modules_to_save keep PEFT's forward (`table` gives the reason).
"""

from __future__ import annotations

import re
from typing import Any

# The lean step's fused projection groups (lean.LeanDecoder): each group reads one input, its outputs side by side.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("o", ("self_attn.o_proj",)),
    ("gu", ("mlp.gate_proj", "mlp.up_proj")),
    ("down", ("mlp.down_proj",)),
)
_PROJ = {p: (g, j) for g, members in GROUPS for j, p in enumerate(members)}
_PATH = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")

Table = list[dict[str, tuple[Any, Any]]]  # per layer: group -> (A [rank, in], B*scaling [out, rank]), float32


def table(peft_model: Any, name: str, sizes: dict[str, list[int]], n_layers: int) -> Table | str:
    """Adapter `name` of a PeftModel laid out per layer and group (block-diagonal B inside a fused group), or the
    reason the lean step cannot apply it. `sizes`: each group's member output widths."""
    import torch
    from peft.tuners.lora import LoraLayer

    cfg = peft_model.peft_config.get(name)
    if cfg is None:
        return f"adapter {name!r} is not loaded"
    if getattr(cfg, "modules_to_save", None) or getattr(cfg, "trainable_token_indices", None):
        return "the adapter trains whole modules or token embeddings too"
    if getattr(cfg, "use_dora", False) or getattr(cfg, "lora_bias", False):
        return "DoRA or LoRA biases"
    parts: list[dict[str, dict[int, tuple[Any, Any]]]] = [{} for _ in range(n_layers)]
    for path, m in peft_model.named_modules():
        if not isinstance(m, LoraLayer) or name not in getattr(m, "lora_A", {}):
            continue
        hit = _PATH.search(path)
        if hit is None or hit.group(2) not in _PROJ or int(hit.group(1)) >= n_layers:
            return f"LoRA on {path}, not one of the Llama projections"
        if name in getattr(m, "lora_variant", {}) or m.merged or type(m.lora_A[name]) is not torch.nn.Linear:
            return f"{path}: a LoRA variant, a merged layer or a non-Linear LoRA module"
        if m.lora_A[name].bias is not None or m.lora_B[name].bias is not None:
            return f"{path}: LoRA with a bias"
        group, j = _PROJ[hit.group(2)]
        a = m.lora_A[name].weight.detach().float()
        b = m.lora_B[name].weight.detach().float() * float(m.scaling[name])
        parts[int(hit.group(1))].setdefault(group, {})[j] = (a, b)
    out: Table = []
    for layer in parts:
        entry = {}
        for group, members in layer.items():
            widths = sizes[group]
            rank = sum(a.shape[0] for a, _ in members.values())
            in_dim = next(iter(members.values()))[0].shape[1]
            a_all = torch.zeros(rank, in_dim)
            b_all = torch.zeros(sum(widths), rank)
            r0 = 0
            for j, (a, b) in sorted(members.items()):
                o0 = sum(widths[:j])
                a_all[r0:r0 + a.shape[0]] = a
                b_all[o0:o0 + widths[j], r0:r0 + a.shape[0]] = b
                r0 += a.shape[0]
            entry[group] = (a_all, b_all)
        out.append(entry)
    return out


def lora_batch(peft_model: Any, lean: Any, slots: list[str | None], tables: dict[str, Table | str]) -> LoraBatch | None:
    """The adapters `slots` (None: a base slot) of a PeftModel stacked for `lean` (a LeanDecoder of its base), or
    None when one of them needs PEFT's forward. `tables` caches each adapter's layout, or the reason, across calls."""
    for n in slots:
        if n is not None and n not in tables:
            tables[n] = table(peft_model, n, lean.group_sizes, len(lean.layers))
    if any(isinstance(tables[n], str) for n in slots if n is not None):
        return None
    return LoraBatch(slots, tables, len(lean.layers))  # type: ignore[arg-type]


class LoraBatch:
    """The adapters of one batch, stacked per layer and group, and each row's slot among them."""

    def __init__(self, slots: list[str | None], tables: dict[str, Table], n_layers: int):
        import torch

        self.slots = slots
        self.layers: list[dict[str, tuple[Any, Any]]] = []
        for i in range(n_layers):
            entry = {}
            for group, _ in GROUPS:
                mats = [tables[s][i].get(group) if s is not None else None for s in slots]
                present = [m for m in mats if m is not None]
                if not present:
                    continue
                rank = max(a.shape[0] for a, _ in present)
                in_dim, out_dim = present[0][0].shape[1], present[0][1].shape[0]
                a_t = torch.zeros(len(slots), in_dim, rank)
                b_t = torch.zeros(len(slots), rank, out_dim)
                for k, m in enumerate(mats):
                    if m is not None:
                        a_t[k, :, : m[0].shape[0]] = m[0].T
                        b_t[k, : m[1].shape[1]] = m[1].T
                entry[group] = (a_t, b_t)
            self.layers.append(entry)
        self.rows: Any = None
        self.index: Any = None
        self.names: list[str | None] | None = None

    def for_rows(self, names: list[str | None]) -> LoraBatch:
        """Point each row at its adapter's slot (None: the batch has one slot and every row uses it); kept while
        the rows stay the same, so a decoding step without joins or leaves builds nothing."""
        import torch

        if names == self.names:
            return self
        self.names = list(names)
        if len(self.slots) == 1:
            self.rows = self.index = None
        else:
            self.index = torch.tensor([self.slots.index(n) for n in names])
            self.rows = torch.arange(len(names))
        return self

    def add(self, out: Any, h: Any, layer: int, group: str) -> Any:
        """`out` (a projection group's output for input `h`, [rows, 1, width]) plus each row's low-rank product."""
        import torch

        mats = self.layers[layer].get(group)
        if mats is None:
            return out
        a_t, b_t = mats
        d = torch.matmul(torch.matmul(h.float().squeeze(1), a_t), b_t)  # [slots, rows, width]
        d = d[0] if self.index is None else d[self.index, self.rows]
        return (out.float() + d.unsqueeze(1)).to(out.dtype)
