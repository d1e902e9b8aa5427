"""The transformers serving engine against plain `model.generate`, in-process (no HTTP), packaged SmolLM2.

Same process, same model (as `tailor serve` loads it: `load_model`, bf16 where the CPU has native BF16), same
~95-token chat prompts, greedy, every request forced to produce exactly --tokens tokens (min_new_tokens for generate,
EOS disabled in the engine), the five cases alternating within each repeat (every other repeat in reverse order):

  a. raw `model.generate`, one prompt                      b. engine, one request
  c. raw `model.generate`, the 8 prompts as one batch       d. engine, 8 requests submitted at once
  e. engine, 8 requests arriving --stagger-ms apart (continuous batching: they join the running batch)

The raw cases run `generate` both from a long-lived worker thread (the baseline: the engine decodes in its worker
thread too) and from the main thread (shown as well; on a loaded 2-core machine OpenMP made the two differ by up to
10x, on a quiet one they agree within noise).
Reported: tokens/s (median, min, max over repeats), the engine/raw ratios b/a and d/c (targets >= 1.0 and >= 0.9),
time to first token p50/p95 for the engine cases, whether the engine's greedy tokens equal generate's, and the
1-minute load average around every case. `--engine-module FILE` benchmarks another engine.py (e.g. the previous
batch-at-a-time one: `git show db0c0a3:llmtailor/serve/engine.py > /tmp/old_engine.py`) against the same baseline.

    python bench/engine_batching.py                 # 5 repeats, 64 tokens -> bench/results/engine_batching.*
    python bench/engine_batching.py --quick         # 2 repeats, 16 tokens, results not written
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SYSTEM = ("You are the support assistant of Acme Cloud, a hosting company. Read the customer's message, name the "
          "ticket category (billing, login, outage, account or other), say in one or two friendly sentences what "
          "happens next, and never promise refunds or dates you cannot know. Keep a calm, polite tone and sign as "
          "Acme Support.")
PROMPTS = [
    "My invoice shows a double charge for March.",
    "I cannot log in to the portal after resetting my password.",
    "The storage bucket in eu-west-1 is not reachable.",
    "Please cancel my subscription at the end of the month.",
    "The mobile app crashes when I open the settings page.",
    "How do I add a new user to my team account?",
    "Our API calls return error 429 since this morning.",
    "I was charged in dollars instead of euros.",
]
LOADED = 1.5  # 1-minute load average above which a run is labelled as measured on a loaded machine


def load_engine_module(path: str | None) -> Any:
    if path is None:
        from llmtailor.serve import engine

        return engine
    spec = importlib.util.spec_from_file_location("bench_engine_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class Worker:
    """A long-lived thread that runs calls handed to it (the baseline's counterpart of the engine's worker)."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            fn, args, out = job
            out.put(fn(*args))

    def call(self, fn: Any, *args: Any) -> Any:
        out: queue.Queue = queue.Queue()
        self.jobs.put((fn, args, out))
        return out.get()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--stagger-ms", type=float, default=100.0)
    ap.add_argument("--raw-thread", choices=["both", "main", "thread"], default="both",
                    help="where the raw cases call generate: the main thread, a worker thread, or both (the worker "
                    "thread is then the baseline of the targets)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice, one per core)")
    ap.add_argument("--quick", action="store_true", help="2 repeats of 16 tokens; prints, writes nothing")
    ap.add_argument("--engine-module", help="benchmark the Engine of this engine.py file instead")
    ap.add_argument("--out", default=str(HERE / "results" / "engine_batching"), help="results path without suffix")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.tokens = min(args.repeats, 2), min(args.tokens, 16)

    import torch

    from llmtailor.chat import prompt_ids
    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    mod = load_engine_module(args.engine_module)
    model, tok = load_model(ModelConfig())
    n = args.tokens
    ids = [prompt_ids(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]) for p in PROMPTS]
    pad = tok.pad_token_id

    def generate(batch: list[list[int]]) -> tuple[float, list[int]]:
        width = max(len(x) for x in batch)
        x = torch.tensor([[pad] * (width - len(r)) + r for r in batch])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
        took = time.perf_counter() - t0
        assert out.shape[1] - width == n
        return took, out[0, width:].tolist()

    baseline = Worker()

    def raw(batch: list[list[int]], where: str) -> tuple[float, list[int]]:
        return generate(batch) if where == "main" else baseline.call(generate, batch)

    engine = mod.Engine(model, tok, max_batch_size=16).start()
    engine.eos_ids = [-1]  # no token id is -1: EOS never ends a request early (min_new_tokens for the engine)

    def served(prompts: list[list[int]], stagger: float = 0.0) -> tuple[float, list[float], list[int]]:
        reqs = [mod.GenRequest(p, n) for p in prompts]
        done = threading.Semaphore(0)
        for r in reqs:
            r.emit = lambda ev: done.release() if ev.kind in ("done", "error") else None
        t0 = time.perf_counter()
        for i, r in enumerate(reqs):
            if stagger and i:
                time.sleep(max(0.0, t0 + i * stagger - time.perf_counter()))
            r.created = time.perf_counter()
            engine.submit(r)
        for _ in reqs:
            done.acquire()
        took = time.perf_counter() - t0
        assert [r.finish_reason for r in reqs] == ["length"] * len(reqs), [r.finish_reason for r in reqs]
        assert all(len(r.ids) == n for r in reqs)
        return took, [r.first_token_at - r.created for r in reqs], reqs[0].ids

    wheres = ["main", "thread"] if args.raw_thread == "both" else [args.raw_thread]
    cases = ([f"a_raw_single_{w}" for w in wheres] + ["b_engine_single"] + [f"c_raw_batch8_{w}" for w in wheres]
             + ["d_engine_8_at_once", "e_engine_8_staggered"])
    tps: dict[str, list[float]] = {c: [] for c in cases}
    ttft: dict[str, list[float]] = {c: [] for c in cases if c.startswith(("b", "d", "e"))}
    loads: list[float] = []
    for w in wheres:  # warm-up: first calls allocate, threads settle
        raw(ids[:1], w)
        raw(ids, w)
    served(ids[:1])
    served(ids)
    toks: dict[str, list[int]] = {}

    def run_raw(case: str, batch: list[list[int]], where: str) -> None:
        t, toks[case] = raw(batch, where)
        tps[f"{case}_{where}"].append(len(batch) * n / t)

    def run_engine(case: str, batch: list[list[int]], stagger: float = 0.0) -> None:
        t, first, toks[case] = served(batch, stagger)
        tps[case].append(len(batch) * n / t)
        ttft[case] += first

    steps = ([lambda w=w: run_raw("a_raw_single", ids[:1], w) for w in wheres]
             + [lambda: run_engine("b_engine_single", ids[:1])]
             + [lambda w=w: run_raw("c_raw_batch8", ids, w) for w in wheres]
             + [lambda: run_engine("d_engine_8_at_once", ids),
                lambda: run_engine("e_engine_8_staggered", ids, args.stagger_ms / 1000)])
    same_single = same_batch = True
    for i in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for step in steps if i % 2 == 0 else reversed(steps):  # every other repeat backwards: no order bias
            step()
        loads.append(os.getloadavg()[0])
        eos = tok.eos_token_id  # generate suppresses EOS (min_new_tokens); compare up to the engine's first EOS
        b, d = toks["b_engine_single"], toks["d_engine_8_at_once"]
        same_single &= toks["a_raw_single"][:b.index(eos) if eos in b else n] == b[:b.index(eos) if eos in b else n]
        same_batch &= toks["c_raw_batch8"][:d.index(eos) if eos in d else n] == d[:d.index(eos) if eos in d else n]
    engine.stop()
    baseline.stop()

    med = {c: statistics.median(v) for c, v in tps.items()}

    def ratios(where: str) -> dict[str, dict[str, float]]:
        """Engine over raw `generate` called from `where`: ratio of the medians, and the median of the per-repeat
        ratios (each engine figure over the baseline measured just before it: less exposed to a changing load)."""
        out: dict[str, dict[str, float]] = {}
        for name, eng, raw_case in (("single_b_over_a", "b_engine_single", "a_raw_single"),
                                    ("batch_d_over_c", "d_engine_8_at_once", "c_raw_batch8"),
                                    ("staggered_e_over_c", "e_engine_8_staggered", "c_raw_batch8")):
            base = tps[f"{raw_case}_{where}"]
            out[name] = {"of_medians": round(med[eng] / statistics.median(base), 3),
                         "paired_median": round(statistics.median(e / b for e, b in zip(tps[eng], base,
                                                                                         strict=True)), 3)}
        return out

    # The baseline runs under the engine's conditions: generate called from a long-lived worker thread, as the
    # engine decodes in its worker thread. generate from the main thread is measured and compared too.
    primary = "thread" if "thread" in wheres else "main"
    by_where = {w: ratios(w) for w in wheres}
    res = {
        "model": f"smollm2-135m-instruct ({str(model.dtype).replace('torch.', '')}, {model.device})",
        "engine": args.engine_module or "llmtailor.serve.engine",
        "prompt_tokens": [len(x) for x in ids],
        "new_tokens": n,
        "repeats": args.repeats,
        "stagger_ms": args.stagger_ms,
        "torch_threads": torch.get_num_threads(),
        "threads_set": bool(args.threads),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "load_avg_1min": {"min": round(min(loads), 2), "max": round(max(loads), 2),
                          "mean": round(statistics.mean(loads), 2)},
        "loaded_machine": max(loads) > LOADED,
        "tokens_per_s": {c: summary(v) for c, v in tps.items()},
        "ttft_s": {c: {"p50": round(pct(v, 0.5), 3), "p95": round(pct(v, 0.95), 3)} for c, v in ttft.items()},
        "baseline": f"generate from the {'worker' if primary == 'thread' else 'main'} thread",
        "ratios": by_where[primary],
        "ratios_by_baseline_thread": by_where,
        "targets_met": {"single >= 1.0": by_where[primary]["single_b_over_a"]["of_medians"] >= 1.0,
                        "batch >= 0.9": by_where[primary]["batch_d_over_c"]["of_medians"] >= 0.9},
        "greedy_tokens_equal_generate": {"single": same_single, "batch8_first_row": same_batch},
        "raw": {c: [round(x, 3) for x in v] for c, v in tps.items()},
    }
    print(json.dumps(res, indent=2))
    if not args.quick:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        out.with_suffix(".md").write_text(report(res))


def report(res: dict[str, Any]) -> str:
    t, ttft, la = res["tokens_per_s"], res["ttft_s"], res["load_avg_1min"]
    names = {"a_raw_single_main": "a. raw `generate`, 1 prompt (main thread)",
             "a_raw_single_thread": "a. raw `generate`, 1 prompt (worker thread)",
             "b_engine_single": "b. engine, 1 request",
             "c_raw_batch8_main": "c. raw `generate`, batch of 8 (main thread)",
             "c_raw_batch8_thread": "c. raw `generate`, batch of 8 (worker thread)",
             "d_engine_8_at_once": "d. engine, 8 requests at once",
             "e_engine_8_staggered": f"e. engine, 8 requests {res['stagger_ms']:.0f} ms apart"}
    rows = "\n".join(
        f"| {names[c]} | {v['median']} | {v['min']} | {v['max']} | "
        + (f"{ttft[c]['p50']} / {ttft[c]['p95']}" if c in ttft else "-") + " |" for c, v in t.items())
    targets = {"single_b_over_a": ">= 1.0", "batch_d_over_c": ">= 0.9", "staggered_e_over_c": "-"}
    labels = {"single_b_over_a": "single stream, b/a", "batch_d_over_c": "8 at once, d/c",
              "staggered_e_over_c": "8 staggered, e/c"}
    ratio_rows = "| ratio (engine / raw) | baseline | of the medians | median of per-repeat ratios | target |\n"
    ratio_rows += "|---|---|---|---|---|\n"
    ratio_rows += "\n".join(
        f"| {labels[k]} | `generate`, {'worker' if w == 'thread' else w} thread | **{v['of_medians']}** | "
        f"{v['paired_median']} | {targets[k]} |" for w, rs in res["ratios_by_baseline_thread"].items()
        for k, v in rs.items())
    loaded = ("**Measured on a loaded machine** (1-minute load average above 1.5); rerun on an idle machine for "
              "final figures." if res["loaded_machine"] else "Measured on an idle machine.")
    return f"""# Serving engine vs raw `model.generate` (in-process)

{res['model']}, {res['torch_threads']} torch threads, {res['machine']}; engine: `{res['engine']}`.
Prompts {min(res['prompt_tokens'])}-{max(res['prompt_tokens'])} tokens, {res['new_tokens']} new tokens each (greedy,
EOS disabled on both sides), {res['repeats']} repeats, cases alternating within each repeat (every other
repeat in reverse order).
1-minute load average during the run: {la['min']}-{la['max']} (mean {la['mean']}). {loaded}

| case | tokens/s median | min | max | TTFT p50 / p95 (s) |
|---|---|---|---|---|
{rows}

{ratio_rows}

The targets are judged on the ratio of the medians against `generate` called from a long-lived worker thread (the
engine decodes in its own worker thread); the ratios against `generate` from the main thread are shown as well.

- greedy tokens equal to `generate`: single {res['greedy_tokens_equal_generate']['single']}, batch of 8 (first row)
  {res['greedy_tokens_equal_generate']['batch8_first_row']}

Reproduce: `python bench/engine_batching.py --repeats {res['repeats']} --tokens {res['new_tokens']}\
{' --threads ' + str(res['torch_threads']) if res.get('threads_set') else ''}`.
"""


if __name__ == "__main__":
    main()
