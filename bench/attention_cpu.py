"""Attention for bf16 training on CPU: PyTorch's fused kernel vs eager matmuls vs llmtailor's matmul attention.

One attention layer of SmolLM2-135M (9 query heads, 3 key/value heads, head size 64) on a batch of 8 rows of
--seq tokens, in bf16, forward + backward, as `tailor train` runs it under bf16 autocast. Reported per layer: time
(median, min, max of --repeats alternating rounds, each the mean of --iters calls) and the memory each variant keeps
for its backward pass (sum of saved tensors, measured with autograd's saved-tensor hooks). Results:
bench/results/attention_cpu.{json,md}.

    python bench/attention_cpu.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmtailor.train.attention import cpu_attention

HERE = Path(__file__).resolve().parent


class _Layer(torch.nn.Module):
    pass


def fused(q, k, v):
    """transformers' sdpa path: k and v repeated per query head, PyTorch's fused causal kernel."""
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=True)


def eager(q, k, v):
    """transformers' eager path: q k^T, fp32 softmax, probabilities kept for the backward pass."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q.shape[2]
    mask = torch.full((s, s), float("-inf")).triu(1)
    w = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask
    return torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def mine(q, k, v):
    return cpu_attention(_Layer(), q, k, v, None)[0]


VARIANTS = {"sdpa (fused CPU kernel)": fused, "eager (transformers)": eager, "llmtailor_cpu": mine}


def one(fn, shape: tuple[int, ...], iters: int) -> tuple[float, int]:
    """Mean seconds of forward + backward over `iters` calls, and bytes saved for backward by one call."""
    b, h, kv, s, d = shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, n, s, d, generator=gen).to(torch.bfloat16).requires_grad_() for n in (h, kv, kv))
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(q, k, v).float().sum().backward()
    input_bytes = sum(t.numel() * t.element_size() for t in (q, k, v))
    kept = max(0, sum(saved) - input_bytes)  # beyond the q, k, v every variant needs
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(q, k, v).float().sum().backward()
    return (time.perf_counter() - t0) / iters, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seq", type=int, default=183, help="Tokens per row (the demo's longest rows in a batch).")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # one thread per core this process may use
    shape = (8, 9, 3, args.seq, 64)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    kept: dict[str, int] = {}
    names = list(VARIANTS)
    for name in names:  # warm-up: oneDNN picks and caches its kernels on first use
        one(VARIANTS[name], shape, 2)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else list(reversed(names)):
            secs, kept[name] = one(VARIANTS[name], shape, args.iters)
            times[name].append(secs * 1000)
    load_after = os.getloadavg()
    stats = {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2), "max_ms": round(max(v), 2),
                 "kept_for_backward_mb": round(kept[k] / 2**20, 2)} for k, v in times.items()}
    base = stats["sdpa (fused CPU kernel)"]["median_ms"]
    loaded = max(load_before[0], load_after[0]) > 1.5
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} cores={os.cpu_count()}",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "shape_b_h_kv_s_d": shape,
           "repeats": args.repeats, "iters": args.iters, "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in load_after], "loaded_machine": loaded, "variants": stats}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_cpu.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["# Attention for bf16 training on CPU (one SmolLM2-135M layer, forward + backward)", "",
          f"Measured {out['date']} on {out['machine']}, torch {out['torch']}, {out['threads']} threads: "
          f"`python bench/attention_cpu.py --repeats {args.repeats}`. Batch 8 x {args.seq} tokens, 9 query / 3 "
          f"key-value heads of 64, bf16. {args.repeats} alternating rounds of {args.iters} calls each. Load average "
          f"before/after: {out['load_average_before']} / {out['load_average_after']}"
          + (" (a loaded machine: read absolute times with care)." if loaded else "."), "",
          "| variant | ms per layer, median (min-max) | vs sdpa | kept for backward beyond q, k, v (MB) |",
          "|---|---|---:|---:|"]
    for name, s in stats.items():
        md.append(f"| {name} | {s['median_ms']:.1f} ({s['min_ms']:.1f}-{s['max_ms']:.1f}) | "
                  f"{base / s['median_ms']:.2f}x | {s['kept_for_backward_mb']:.2f} |")
    md += ["", "A training step runs this once per layer (30 layers on SmolLM2-135M). `tailor train` uses "
           "llmtailor_cpu on CPU under bf16 (`train.attention: auto`); `train.attention: model` keeps the model's own."]
    (args.out / "attention_cpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
