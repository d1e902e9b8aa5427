"""Load test of `tailor serve` over real HTTP: many concurrent streaming clients, some of them hanging up.

Starts `tailor serve` as a subprocess (the packaged SmolLM2; --engine llamacpp by default, or transformers) on a
throw-away project: three random LoRA adapters saved as run folders and registered, an alias for each, a RAG alias
over a few documents, API keys for two tenants. Then, before any load, every sampled prompt is answered alone (the
reference). Then --clients concurrent streaming clients (httpx, async) send --requests requests, spread over the base,
the adapters and the RAG alias and over the two keys; about --disconnect of them hang up after a few chunks.

Measured: latency and time to first token (p50/p95/p99) of the completed requests; statuses (anything but 200 is
an error, except 503 from a full queue, counted apart); the server's own count of cancelled requests (disconnects must
stop decoding); the server's RSS after warm-up, after every --checkpoint requests, at the end, and its peak. Memory
is read as warm-up vs leak: a leak keeps its slope, warm-up flattens, so the report gives the growth of the first
half and of the second half of the run and the second half's least-squares slope (MB per 1,000 requests).
--trace-memory (diagnosis, off by default) starts the server under tracemalloc and makes it dump, at every
checkpoint, gc object counts by type and a tracemalloc snapshot (on SIGUSR1); the report lists the Python objects
and allocation sites that grew between the first checkpoint and the last, and the Python heap's own growth, so
growth in native memory (llama.cpp, the allocator) is told apart from Python objects kept per request.
Cross-talk check: every prompt carries a secret number unique to that request, which the model repeats. (1) No
answer may contain another request's number. (2) For every --sample-th request, the streamed answer must equal,
character for character, the answer the same prompt got alone before the load (greedy decoding), so a mixed-up KV
cache, slot or adapter shows.

    python bench/serve_load.py [--engine transformers] [--requests 1000] [--clients 64] [--max-tokens 16]
                               [--checkpoint 200] [--trace-memory] [--out DIR]

Results: bench/results/serve_load.{json,md} (with --engine transformers: serve_load_transformers.*).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from serve import free_port, make_adapters, stop, wait_ready  # noqa: E402  (bench/serve.py)

DOCS = [
    ("refunds", "Refunds are paid within 14 days of the request, to the card used for the purchase."),
    ("shipping", "Orders ship within two working days; express delivery arrives the next working day."),
    ("returns", "Items can be returned within 30 days if they are unused and in their original packaging."),
    ("support", "Support answers by email within one working day, and by phone on weekdays from 9 to 17."),
    ("warranty", "Electronics carry a two-year warranty that covers manufacturing defects, not accidents."),
]
QUESTIONS = ["How long do refunds take?", "When do orders ship?", "Can I return an item?", "How do I reach support?",
             "What does the warranty cover?"]
CODE = re.compile(r"\d{5,}")

# Runs `tailor serve`; each SIGUSR1 writes gc type counts as dump-N.json and a tracemalloc snapshot as dump-N.pickle
# into $LLMTAILOR_MEMTRACE_DIR. tracemalloc starts at the first signal (after the warm-up: under tracemalloc the
# start-up imports take minutes), so a snapshot holds what was allocated since then and is still alive.
TRACE_WRAPPER = r"""
import collections, gc, json, os, runpy, signal, sys, tracemalloc
out = os.environ["LLMTAILOR_MEMTRACE_DIR"]
seen = [0]
def dump(signum, frame):
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("LLMTAILOR_MEMTRACE_FRAMES", "6")))
    n = seen[0]
    seen[0] += 1
    gc.collect()
    objs = gc.get_objects()
    types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objs)
    del objs
    traced, peak = tracemalloc.get_traced_memory()
    tracemalloc.take_snapshot().dump(f"{out}/dump-{n}.pickle")
    with open(f"{out}/.dump-{n}.json", "w") as f:
        json.dump({"traced_mb": traced / 2**20, "objects": sum(types.values()), "types": types,
                   "garbage": len(gc.garbage)}, f)
    os.replace(f"{out}/.dump-{n}.json", f"{out}/dump-{n}.json")
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["tailor", *sys.argv[1:]]
runpy.run_module("llmtailor.cli.main", run_name="__main__", alter_sys=True)
"""


def code_for(i: int) -> str:
    """Request i's secret number: five or more digits, unique per request (the model repeats numbers reliably; it
    does not repeat letter codes)."""
    return str(10007 + 89 * i)


def plan(n: int, models: list[str], share: float, seed: int = 0) -> list[dict]:
    """Request i: a model (base, adapters, RAG alias in turn), a key, a prompt with its own code, and (for about
    `share` of them) after how many chunks the client hangs up."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model = models[i % len(models)]
        code = code_for(i)
        if model == "docs":
            text = f"{QUESTIONS[i % len(QUESTIONS)]} (ticket {code})"
        else:
            text = f"The secret number is {code}. What is the secret number?"
        out.append({"i": i, "model": model, "key": i % 2, "code": code, "text": text,
                    "disconnect_after": rng.randint(1, 4) if rng.random() < share else None})
    return out


def write_project(tmp: Path, n_adapters: int, threads: int | None) -> tuple[Path, dict]:
    """Config, run folders registered in the registry, a RAG index, two client keys and an operator key."""
    import shutil

    import yaml

    from llmtailor.config import TailorConfig
    from llmtailor.rag.ingest import Record, ingest_records
    from llmtailor.registry.db import Registry
    from llmtailor.registry.hooks import sync_run
    from llmtailor.runs import update_run

    runs = tmp / "runs"
    run_ids = []
    for i, folder in enumerate(make_adapters(tmp, n_adapters)):
        run_id = f"load-{i}"
        run_dir = runs / run_id
        run_dir.mkdir(parents=True)
        shutil.move(str(folder), run_dir / "adapter")
        update_run(run_dir, run_id=run_id, status="completed", method="lora", base_model="smollm2",
                   dataset_hash=f"h{i}", dataset_dir=str(tmp / "datasets" / run_id),
                   adapter_dir=str(run_dir / "adapter"), final_loss=0.5)
        run_ids.append(run_id)
    raw = {
        "project": "load", "runs_dir": str(runs), "registry": {"url": f"sqlite:///{tmp / 'registry.db'}"},
        "rag": {"index_dir": str(tmp / "index"), "embedding": {"model": "hashing"}, "search": {"mode": "dense"},
                "answer": {"min_score": 0.0}},
        "serve": {"require_api_key": True, "rate_limit_per_minute": 1000000, "log_requests": True,
                  "llamacpp_slots": 8, "max_model_len": 2048, "llamacpp_threads": threads,
                  "aliases": {**{f"ad{i}": {"adapter": r} for i, r in enumerate(run_ids)},
                              "docs": {"index": str(tmp / "index"), "top_k": 2}}},
    }
    cfg = TailorConfig.model_validate(raw)
    path = tmp / "tailor.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json(exclude_unset=True))))
    reg = Registry(cfg.registry.url)
    for r in run_ids:
        sync_run(reg, runs / r)
    ingest_records([Record(k, v) for k, v in DOCS], cfg.rag.index_dir, cfg.rag)
    keys = {"clients": [reg.create_key("acme", [], ["*"])[1], reg.create_key("globex", [], ["*"])[1]],
            "operator": reg.create_key("load", [], ["*"])[1]}
    reg.close()
    return path, keys


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def one(client, base: str, key: str, req: dict, max_tokens: int) -> dict:
    """One streaming request; returns status, text, latency, TTFT, and whether we hung up on purpose."""
    body = {"model": req["model"], "messages": [{"role": "user", "content": req["text"]}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first = None
    parts: list[str] = []
    chunks = 0
    try:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status_code != 200:
                await r.aread()
                return {"i": req["i"], "status": r.status_code, "error": r.text[:200]}
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                d = json.loads(line[6:])
                if "error" in d:
                    return {"i": req["i"], "status": "stream-error", "error": str(d["error"])[:200]}
                delta = d["choices"][0]["delta"].get("content") if d["choices"] else None
                if delta:
                    first = first or time.perf_counter()
                    parts.append(delta)
                    chunks += 1
                    if req["disconnect_after"] is not None and chunks >= req["disconnect_after"]:
                        return {"i": req["i"], "status": "disconnected"}  # leaving the block closes the connection
    except Exception as e:  # a transport failure is a finding, not a crash of the benchmark
        return {"i": req["i"], "status": type(e).__name__, "error": str(e)[:200]}
    end = time.perf_counter()
    return {"i": req["i"], "status": 200, "text": "".join(parts), "latency_s": end - t0,
            "ttft_s": (first or end) - t0}


async def drive(base: str, keys: list[str], reqs: list[dict], clients: int, max_tokens: int,
                on_done=None) -> list[dict]:
    """Run the requests with `clients` concurrent connections; `on_done(n)` after each completion."""
    import httpx

    todo = iter(reqs)
    out: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            for req in todo:
                out.append(await one(client, base, keys[req["key"]], req, max_tokens))
                if on_done is not None:
                    on_done(len(out))

        await asyncio.gather(*(worker() for _ in range(clients)))
    return out


def await_dump(trace_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until the server has written its `count`-th memory dump (gc walk + snapshot take seconds)."""
    if count == 0:
        return
    t0 = time.time()
    while not (trace_dir / f"dump-{count - 1}.json").exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            raise RuntimeError(f"the server wrote no memory dump {count - 1} (exit code {proc.poll()})")
        time.sleep(0.5)


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of (requests, MB), in MB per 1,000 requests."""
    if len(points) < 2:
        return None
    mx = statistics.mean(n for n, _ in points)
    my = statistics.mean(v for _, v in points)
    den = sum((n - mx) ** 2 for n, _ in points)
    return round(1000 * sum((n - mx) * (v - my) for n, v in points) / den, 1) if den else None


def growth(marks: dict[int, float | None], total: int) -> dict:
    """Warm-up or leak: RSS growth and slope over the first and the second half of the checkpoints (they share the
    middle one). Warm-up (caches, allocator arenas, slots and adapters touched for the first time) flattens, so
    its second-half slope is a small part of the first's; a leak grows by the same amount per request throughout."""
    pts = sorted((n, v) for n, v in marks.items() if v is not None)
    if len(pts) < 3:
        return {}
    mid = len(pts) // 2
    first, second = pts[: mid + 1], pts[mid:]
    s1, s2 = slope(first), slope(second)
    flat = s2 is not None and (s2 <= 5.0 or (s1 is not None and s1 > 0 and s2 <= 0.25 * s1))
    return {"first_half": [first[0][0], first[-1][0]], "growth_first_half": round(first[-1][1] - first[0][1], 1),
            "growth_second_half": round(second[-1][1] - second[0][1], 1), "slope_first_half_per_1000": s1,
            "slope_second_half_per_1000": s2,
            "reading": ("flattens: warm-up (second-half slope <= 5 MB or <= 1/4 of the first half's per 1,000 "
                        "requests)" if flat else "keeps growing in the second half: a leak unless it flattens in "
                        "a longer run")}


def trace_report(trace_dir: Path, dumps: list[int], top: int = 15) -> dict:
    """What grew between the first load checkpoint and the last: the Python heap (tracemalloc), object counts by
    type (gc), and the allocation sites (tracemalloc, by line). Dump 0 (before the load) shows the warm-up."""
    import tracemalloc

    info = [json.loads((trace_dir / f"dump-{i}.json").read_text()) for i in range(len(dumps))]
    out: dict = {"at_requests": dumps, "python_alive_since_warmup_mb": [round(d["traced_mb"], 1) for d in info],
                 "gc_objects": [d["objects"] for d in info], "gc_garbage": [d["garbage"] for d in info]}
    if len(dumps) < 3:
        return out
    a, b = info[1], info[-1]
    grew = sorted(((t, b["types"].get(t, 0) - a["types"].get(t, 0)) for t in set(a["types"]) | set(b["types"])),
                  key=lambda x: -x[1])
    out["types_grown"] = [{"type": t, "counts": [d["types"].get(t, 0) for d in info]} for t, n in grew[:top] if n > 0]
    skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    old = tracemalloc.Snapshot.load(str(trace_dir / "dump-1.pickle")).filter_traces(skip)
    new = tracemalloc.Snapshot.load(str(trace_dir / f"dump-{len(dumps) - 1}.pickle")).filter_traces(skip)
    out["sites_grown"] = [{"site": f"{st.traceback[0].filename}:{st.traceback[0].lineno}",
                           "kb": round(st.size_diff / 1024, 1), "blocks": st.count_diff}
                          for st in new.compare_to(old, "lineno")[:top] if st.size_diff > 0]
    out["stacks_grown"] = [{"kb": round(st.size_diff / 1024, 1), "blocks": st.count_diff,
                            "stack": [f"{f.filename}:{f.lineno}" for f in st.traceback]}
                           for st in new.compare_to(old, "traceback")[:5] if st.size_diff > 0]
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def cancelled_count(base: str, key: str) -> float:
    import httpx

    from llmtailor.serve.metrics import parse

    m = parse(httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text)
    return sum(v for k, v in m.items() if k.startswith("llmtailor_cancelled_requests_total"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["llamacpp", "transformers"], default="llamacpp")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--disconnect", type=float, default=0.10, help="share of clients that hang up mid-stream")
    ap.add_argument("--sample", type=int, default=10, help="compare every N-th answer with its answer alone")
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--threads", type=int, help="serve.llamacpp_threads (default: every core)")
    ap.add_argument("--checkpoint", type=int, default=200, help="record RSS (and dump with --trace-memory) every N")
    ap.add_argument("--trace-memory", action="store_true",
                    help="diagnosis: server under tracemalloc, dumps gc counts and snapshots at every checkpoint")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-load-"))
    t_setup = time.perf_counter()
    config, keys = write_project(tmp, args.adapters, args.threads)
    models = ["smollm2-135m-instruct", *[f"ad{i}" for i in range(args.adapters)], "docs"]
    reqs = plan(args.requests, models, args.disconnect)
    print(f"project ready in {time.perf_counter() - t_setup:.0f} s: {tmp}", file=sys.stderr)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    trace_dir = tmp / "memtrace"
    launch = [sys.executable, "-m", "llmtailor.cli.main"]
    if args.trace_memory:
        trace_dir.mkdir()
        env["LLMTAILOR_MEMTRACE_DIR"] = str(trace_dir)
        launch = [sys.executable, "-c", TRACE_WRAPPER]
    proc = subprocess.Popen([*launch, "serve", "-c", str(config), "--engine", args.engine, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    dumps: list[int] = []  # request count at each memory dump (0: after warm-up), in dump order
    samples: list[tuple[float, float]] = []
    stop_sampling = threading.Event()

    def sample_rss() -> None:
        while not stop_sampling.is_set():
            v = rss_mb(proc.pid)
            if v is not None:
                samples.append((time.perf_counter(), v))
            stop_sampling.wait(0.5)

    try:
        wait_ready(base, proc)
        client_keys = keys["clients"]
        # Warm-up: every model once (adapters load, and export to GGUF for llama.cpp; the RAG index opens).
        asyncio.run(drive(base, client_keys, [{**r, "disconnect_after": None} for r in reqs[:len(models)]],
                          len(models), args.max_tokens))
        # References: the sampled requests, one at a time, before any load.
        sampled = [r for r in reqs if r["i"] % args.sample == 0 and r["disconnect_after"] is None]
        t_ref = time.perf_counter()
        alone = {x["i"]: x for x in asyncio.run(drive(base, client_keys, sampled, 1, args.max_tokens))}
        ref_s = time.perf_counter() - t_ref
        rss_before = rss_mb(proc.pid)
        cancelled_before = cancelled_count(base, keys["operator"])
        marks: dict[int, float | None] = {}

        def dump_memory(n: int) -> None:
            if args.trace_memory:
                dumps.append(n)
                os.kill(proc.pid, signal.SIGUSR1)

        dump_memory(0)
        await_dump(trace_dir, len(dumps), proc)

        def on_done(n: int) -> None:
            if n % args.checkpoint == 0 or n == args.requests:
                marks[n] = rss_mb(proc.pid)
                dump_memory(n)
            if n % 50 == 0:
                print(f"{n}/{args.requests} requests done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        threading.Thread(target=sample_rss, daemon=True).start()
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        results = asyncio.run(drive(base, client_keys, reqs, args.clients, args.max_tokens, on_done))
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        stop_sampling.set()
        time.sleep(1.0)  # let the server notice the last hang-ups
        if args.trace_memory:
            await_dump(trace_dir, len(dumps), proc)
        cancelled = cancelled_count(base, keys["operator"]) - cancelled_before
        rss_end = rss_mb(proc.pid)
        peak = rss_mb(proc.pid, "VmHWM")
        healthy = __import__("httpx").get(base + "/health", timeout=10).status_code == 200
    finally:
        stop_sampling.set()
        stop(proc)

    by_i = {r["i"]: r for r in reqs}
    statuses: dict[str, int] = {}
    for x in results:
        statuses[str(x["status"])] = statuses.get(str(x["status"]), 0) + 1
    ok = [x for x in results if x["status"] == 200]
    errors = {k: v for k, v in statuses.items() if k not in ("200", "disconnected", "503")}
    foreign = []  # an answer that names another request's code
    codes = {r["code"] for r in reqs}
    for x in ok:
        own = by_i[x["i"]]["code"]
        others = [c for c in CODE.findall(x["text"]) if c != own and c in codes]
        if others:
            foreign.append({"i": x["i"], "codes": others})
    compared = [x for x in ok if x["i"] in alone and alone[x["i"]]["status"] == 200]
    mismatched = [{"i": x["i"], "model": by_i[x["i"]]["model"], "alone": alone[x["i"]]["text"], "load": x["text"]}
                  for x in compared if x["text"] != alone[x["i"]]["text"]]
    echoed = sum(1 for x in ok if by_i[x["i"]]["code"] in x["text"])
    lat = [x["latency_s"] for x in ok]
    ttft = [x["ttft_s"] for x in ok]
    load = max(load_before, load_after)
    res = {
        "engine": args.engine, "llamacpp_threads": args.threads, "requests": args.requests, "clients": args.clients,
        "max_tokens": args.max_tokens,
        "models": models, "disconnect_share": args.disconnect, "wall_s": round(wall, 1),
        "requests_per_s": round(len(results) / wall, 2),
        "latency_s": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99)},
        "ttft_s": {"p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "p99": pct(ttft, 0.99)},
        "mean_completed_tokens_chars": round(statistics.mean(len(x["text"]) for x in ok), 1) if ok else None,
        "statuses": statuses, "errors": errors,
        "error_examples": [x for x in results if str(x["status"]) in errors][:5],
        "server_cancelled_requests": cancelled,
        "rss_mb": {"after_warmup": rss_before, "after_request_200": marks.get(200), "after_last": marks.get(
            args.requests), "end": rss_end, "peak": peak,
            "growth_200_to_last": (round(marks[args.requests] - marks[200], 1)
                                   if marks.get(200) and marks.get(args.requests) else None),
            "after_request_n": {str(k): round(v, 1) for k, v in sorted(marks.items()) if v is not None},
            **growth(marks, args.requests),
            "samples_every_5s": [round(v, 1) for _, v in samples[::10]]},
        "memory_trace": trace_report(trace_dir, dumps) if args.trace_memory else None,
        "crosstalk": {"answers_checked_for_foreign_codes": len(ok), "foreign_codes": foreign,
                      "answers_echoing_their_code": echoed, "compared_with_alone": len(compared),
                      "mismatched": mismatched[:20], "mismatch_count": len(mismatched),
                      "references_s": round(ref_s, 1)},
        "server_healthy_after": healthy,
        "machine": {"threads": len(os.sched_getaffinity(0)), "load_avg_1m": [round(load_before, 2),
                                                                             round(load_after, 2)],
                    "loaded": load > 1.5},
        "command": "python bench/serve_load.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serve_load" if args.engine == "llamacpp" else f"serve_load_{args.engine}"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = report(res)
    (args.out / f"{stem}.md").write_text(md)
    print(md)


def report(res: dict) -> str:
    r, c = res["rss_mb"], res["crosstalk"]
    lat = " / ".join(str(res["latency_s"][q]) for q in ("p50", "p95", "p99"))
    ttft = " / ".join(str(res["ttft_s"][q]) for q in ("p50", "p95", "p99"))
    rss = " / ".join(f"{r[k]:.0f}" if r[k] is not None else "?"
                     for k in ("after_warmup", "after_request_200", "after_last", "peak"))
    same = c["compared_with_alone"] - c["mismatch_count"]
    loaded = (f"**Measured on a loaded machine** (1-minute load average {res['machine']['load_avg_1m'][0]} before, "
              f"{res['machine']['load_avg_1m'][1]} after, {res['machine']['threads']} cores)"
              if res["machine"]["loaded"] else f"1-minute load average {res['machine']['load_avg_1m']}")
    return f"""# Load test of `tailor serve` (bench/serve_load.py)

`{res['command']}`: engine **{res['engine']}**, the packaged SmolLM2-135M-Instruct, {res['requests']} streaming
chat requests from {res['clients']} concurrent clients (httpx), max_tokens {res['max_tokens']}, greedy, spread over
{', '.join(res['models'])} (`adN`: random LoRA adapters registered from run folders; `docs`: a RAG alias) and two
API keys; {res['disconnect_share']:.0%} of the clients hang up after 1-4 chunks.
One run, no baseline: a check of errors, cross-talk and memory; its latencies are queueing,
not a speed result. {loaded}.

| | value |
|---|---|
| wall time | {res['wall_s']} s ({res['requests_per_s']} requests/s) |
| latency p50 / p95 / p99 (completed) | {lat} s |
| time to first token p50 / p95 / p99 | {ttft} s |
| statuses | {', '.join(f'{k}: {v}' for k, v in sorted(res['statuses'].items()))} |
| errors (anything but 200, intended hang-ups and 503) | {sum(res['errors'].values())} |
| requests the server cancelled (client gone) | {res['server_cancelled_requests']:.0f} |
| server RSS after warm-up / after request 200 / after the last / peak | {rss} MB |
| RSS growth from request 200 to the last | {r['growth_200_to_last']} MB |
| RSS after request n (MB) | {', '.join(f"{k}: {v:.0f}" for k, v in r['after_request_n'].items())} |
| RSS growth, first / second half of the checkpoints | {r.get('growth_first_half')} / {r.get('growth_second_half')} MB |
| RSS slope, first / second half (MB per 1,000 requests) | {r.get('slope_first_half_per_1000')} / \
{r.get('slope_second_half_per_1000')}: {r.get('reading', 'too few checkpoints')} |
| answers naming another request's number | {len(c['foreign_codes'])} of {c['answers_checked_for_foreign_codes']} |
| answers repeating their own number | {c['answers_echoing_their_code']} of {c['answers_checked_for_foreign_codes']} |
| sampled answers equal to the same prompt answered alone | {same} of {c['compared_with_alone']} |
| server healthy afterwards | {res['server_healthy_after']} |

Cross-talk is checked twice: each prompt carries a secret number unique to its request (the model repeats it), and
no answer may contain another request's number; and every sampled answer (every 10th request that did not hang up)
must equal, character for character, the answer the same prompt got alone before the load.
""" + trace_md(res.get("memory_trace"))


def trace_md(t: dict | None) -> str:
    """The --trace-memory section: Python heap and object counts at each dump, and what grew."""
    if not t:
        return ""
    lines = ["", "## Memory trace (--trace-memory: tracemalloc on, so RSS and latency here are not the plain run's)",
             "", f"At requests {t['at_requests']} (0: after warm-up, before the load): Python memory allocated "
             f"since the warm-up and still alive (tracemalloc) {t['python_alive_since_warmup_mb']} MB; gc-tracked "
             f"objects {t['gc_objects']}; uncollectable {t['gc_garbage']}.", ""]
    if t.get("types_grown"):
        lines += ["Object types that grew from the first load checkpoint to the last (count at each dump):", ""]
        lines += [f"- `{x['type']}`: {x['counts']}" for x in t["types_grown"]]
    if t.get("sites_grown"):
        lines += ["", "Allocation sites that grew (first load checkpoint to the last):", ""]
        lines += [f"- {x['kb']} KB in {x['blocks']} blocks: `{x['site']}`" for x in t["sites_grown"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
