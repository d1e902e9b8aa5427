"""Serving over HTTP, in one run on one machine, with the official `openai` SDK as the client.

Configurations (each started as its own server process, measured in turn, the whole cycle repeated --repeats
times so that a slow spell of the machine hits every configuration alike):
- anchor: llama.cpp's own `llama-server` on the packaged SmolLM2 Q4_1 GGUF (--llama-server PATH; build it from
  the llama.cpp sources vendored in the llama-cpp-python sdist, see --help). Skipped, and said so, without it.
- `tailor serve --engine llamacpp` on the same GGUF.
- `tailor serve --engine transformers` (bf16 where the CPU has it, as `model.precision: auto` picks).
- raw `model.generate` in this process (no server): single prompt, and one batch of 8.

Measured per configuration: one stream (tokens/s, time to first token), 8 and 32 concurrent streams (total
tokens/s, p50 and p95 time to first token), 8 concurrent streams spread over 4 LoRA adapters (tailor engines
only; llama-server needs its adapters at start, so it is not in that row), and the server's peak RSS.
Work: story prompts whose greedy answers run past --tokens on every engine, max_tokens --tokens, temperature 0;
tokens are the `usage.completion_tokens` each server reports, and a stream that ends early is counted and reported
("short streams"), since it would measure another amount of work. Results: bench/results/serve.{json,md}.

    python bench/serve.py --repeats 3 [--llama-server /path/to/llama-server] [--before DIR]

--before DIR also measures another version of llmtailor in the same run (configs `llamacpp@before`,
`transformers@before`): DIR holds its `llmtailor` package (for instance `git archive REV llmtailor | tar -x -C DIR`),
run with this environment's libraries, so a before/after comparison shares the machine's state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SYSTEM = "You are a helpful assistant."
# Greedy answers to each of these run past 200 tokens on the packaged SmolLM2 (checked with llama.cpp; the report
# counts any stream that ends before max_tokens). The earlier "count from 1 to 500" prompt was echoed back in 19
# tokens and ended, so its figures measured 19-token answers.
TOPICS = ["the ocean", "a lighthouse keeper", "the city of Lyon", "volcanoes", "a robot who paints",
          "the history of bread", "winter in Norway", "honeybees"]
PROMPTS = [f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}, chapter {i + 1}." for i in range(32)]
BUILD_HINT = """llama-server build (about 12 min on 2 cores):
  pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
  cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B lcpp -G Ninja -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \\
        -DLLAMA_BUILD_TESTS=OFF -DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__ \\
        && cmake --build lcpp --target llama-server
(-U__AMX_INT8__ as for llmtailor's own build: ggml's AMX kernels crashed on a Xeon VM that reports AMX.)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def one_stream(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "tokens": tokens, "seconds": end - t0}


async def concurrent(base_url: str, models: list[str], n: int, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    res = await asyncio.gather(*(one_stream(client, models[i % len(models)], PROMPTS[i % len(PROMPTS)], max_tokens)
                                 for i in range(n)))
    wall = time.perf_counter() - t0
    await client.close()
    ttfts = sorted(r["ttft"] for r in res)
    tokens = sum(r["tokens"] for r in res)
    return {"tokens_per_s": tokens / wall, "tokens": tokens, "wall_s": wall,
            "short_streams": sum(r["tokens"] < max_tokens for r in res),
            "ttft_p50_s": statistics.median(ttfts), "ttft_p95_s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]}


LEVELS = ("single", "c8", "c32", "adapters4_c8")


def measure_server(base_url: str, model: str, adapters: list[str], max_tokens: int,
                   levels: tuple[str, ...] = LEVELS) -> dict:
    out = {}
    for level, n in (("single", 1), ("c8", 8), ("c32", 32)):
        if level in levels:
            out[level] = asyncio.run(concurrent(base_url, [model], n, max_tokens))
    if adapters and "adapters4_c8" in levels:
        out["adapters4_c8"] = asyncio.run(concurrent(base_url, adapters, 8, max_tokens))
    return out


def write_project(tmp: Path, adapters: list[Path]) -> Path:
    import yaml

    cfg = {"project": "bench", "registry": {"url": f"sqlite:///{tmp / 'registry.db'}"},
           "serve": {"require_api_key": False, "log_requests": False, "max_model_len": 2048,
                     "llamacpp_slots": 8, "rate_limit_per_minute": 100000,
                     "aliases": {f"ad{i}": {"adapter": str(p)} for i, p in enumerate(adapters)}}}
    path = tmp / "tailor.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_adapters(tmp: Path, n: int = 4) -> list[Path]:
    """Random LoRA adapters (non-zero B, so they change the answers) on the packaged base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model

    model, _ = load_model(ModelConfig(precision="fp32"))
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.002)
        path = tmp / f"adapter{i}"
        peft.save_pretrained(path)
        model = peft.unload()
        out.append(path)
    return out


def start_tailor(config: Path, engine: str, port: int, code: Path | None = None) -> subprocess.Popen:
    """`tailor serve` as a subprocess; `code`: a folder whose `llmtailor` package is run instead of this one."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.Popen([sys.executable, "-m", "llmtailor.cli.main", "serve", "-c", str(config), "--engine",
                             engine, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=code or None)


def start_llama_server(binary: str, gguf: Path, port: int, threads: int) -> subprocess.Popen:
    # The same OpenMP wait policy as `tailor serve --engine llamacpp` sets for itself (PASSIVE unless the user set
    # one): both sides run the same kernels under the same threading rule.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return subprocess.Popen([binary, "-m", str(gguf), "--port", str(port), "-t", str(threads), "-tb", str(threads),
                             "--parallel", "8", "-c", "16384", "--no-webui"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def raw_generate(max_tokens: int, repeats: int) -> dict:
    """`model.generate` in process (bf16 where the CPU has it): one prompt, then a batch of 8."""
    import torch

    from llmtailor.chat import prompt_ids
    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model

    model, tok = load_model(ModelConfig())
    ids = [prompt_ids(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}])
           for p in PROMPTS[:8]]
    eos = tok.eos_token_id

    def run(batch: list[list[int]]) -> float:
        width = max(len(x) for x in batch)
        x = torch.full((len(batch), width), eos, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, row in enumerate(batch):
            x[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, pad_token_id=eos, eos_token_id=eos)
        assert out.shape[1] - width == max_tokens
        return len(batch) * max_tokens / (time.perf_counter() - t0)

    run(ids[:1])  # warm-up
    single, batch8 = [], []
    for _ in range(repeats):
        single.append(run(ids[:1]))
        batch8.append(run(ids))
    return {"single_tokens_per_s": single, "batch8_tokens_per_s": batch8,
            "precision": str(next(model.parameters()).dtype)}


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=BUILD_HINT)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--llama-server", default=shutil.which("llama-server"))
    ap.add_argument("--configs", default="anchor,llamacpp,transformers,raw")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--levels", default=",".join(LEVELS), help=f"what to measure, of {','.join(LEVELS)}")
    ap.add_argument("--before", type=Path, help="folder holding an older llmtailor package to measure too")
    args = ap.parse_args()
    configs = args.configs.split(",")
    if args.before is not None:
        if not (args.before / "llmtailor" / "serve" / "app.py").is_file():
            raise SystemExit(f"--before {args.before}: no llmtailor/serve/app.py in it")
        for engine in ("llamacpp", "transformers"):
            if engine in configs:
                configs.insert(configs.index(engine), f"{engine}@before")
    from llmtailor.config import ModelConfig
    from llmtailor.export.gguf import base_gguf

    gguf = base_gguf(ModelConfig())
    threads = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    adapters = make_adapters(tmp) if "adapters4_c8" in args.levels.split(",") else []
    project = write_project(tmp, adapters)
    aliases = [f"ad{i}" for i in range(len(adapters))]
    if "anchor" in configs and not (args.llama_server and Path(args.llama_server).exists()):
        print("anchor skipped: no llama-server binary (--llama-server PATH)\n" + BUILD_HINT, file=sys.stderr)
        configs.remove("anchor")
    runs: dict[str, list[dict]] = {c: [] for c in configs if c != "raw"}
    rss: dict[str, list[float]] = {c: [] for c in runs}
    loads = []
    raw = None
    for rep in range(args.repeats):
        for c in runs:
            port = free_port()
            if c == "anchor":
                proc = start_llama_server(args.llama_server, gguf, port, threads)
                model, ads = "smollm2", []
            else:
                engine, _, before = c.partition("@")
                proc = start_tailor(project, engine, port, args.before if before else None)
                model, ads = "smollm2-135m-instruct", aliases
            try:
                wait_ready(f"http://127.0.0.1:{port}", proc)
                asyncio.run(concurrent(f"http://127.0.0.1:{port}/v1", [model], 1, 8))  # warm-up
                if ads:  # adapters load (and export to GGUF) on first use: not part of the timed requests
                    asyncio.run(concurrent(f"http://127.0.0.1:{port}/v1", ads, len(ads), 4))
                loads.append(os.getloadavg()[0])
                runs[c].append(measure_server(f"http://127.0.0.1:{port}/v1", model, ads, args.tokens,
                                              tuple(args.levels.split(","))))
                r = peak_rss_mb(proc.pid)
                if r is not None:
                    rss[c].append(r)
            finally:
                stop(proc)
            print(f"repeat {rep + 1}: {c} done", file=sys.stderr)
        if "raw" in configs:
            one = raw_generate(args.tokens, 1)
            if raw is None:
                raw = one
            else:
                raw["single_tokens_per_s"] += one["single_tokens_per_s"]
                raw["batch8_tokens_per_s"] += one["batch8_tokens_per_s"]
    report(args, runs, rss, raw, loads, threads)


def report(args, runs: dict, rss: dict, raw: dict | None, loads: list[float], threads: int) -> None:
    summary: dict[str, dict] = {}
    for c, reps in runs.items():
        s: dict[str, dict] = {}
        for key in ("single", "c8", "c32", "adapters4_c8"):
            vals = [r[key] for r in reps if key in r]
            if not vals:
                continue
            s[key] = {"tokens_per_s": spread([v["tokens_per_s"] for v in vals]),
                      "ttft_p50_s": spread([v["ttft_p50_s"] for v in vals]),
                      "ttft_p95_s": spread([v["ttft_p95_s"] for v in vals])}
        if rss[c]:
            s["peak_rss_mb"] = spread(rss[c])
        summary[c] = s
    if raw:
        summary["raw"] = {"single": {"tokens_per_s": spread(raw["single_tokens_per_s"])},
                          "batch8": {"tokens_per_s": spread(raw["batch8_tokens_per_s"])}, "precision": raw["precision"]}
    load = max(loads) if loads else os.getloadavg()[0]
    short = {c: sum(v.get("short_streams", 0) for r in reps for v in r.values() if isinstance(v, dict))
             for c, reps in runs.items()}

    def med(c: str, k: str) -> float | None:
        return summary.get(c, {}).get(k, {}).get("tokens_per_s", {}).get("median")

    ratios = {}
    for engine in ("llamacpp", "transformers"):
        for key in ("single", "c8", "c32"):
            if med(f"{engine}@before", key) and med(engine, key):
                ratios[f"{engine}_vs_before_{key}"] = round(med(engine, key) / med(f"{engine}@before", key), 3)
    if med("anchor", "single") and med("llamacpp", "single"):
        ratios["llamacpp_vs_anchor_single"] = round(med("llamacpp", "single") / med("anchor", "single"), 3)
    if med("transformers", "single") and med("llamacpp", "single"):
        ratios["llamacpp_vs_transformers_single"] = round(med("llamacpp", "single") / med("transformers", "single"), 2)
    if raw and med("transformers", "c8"):
        ratios["transformers_c8_vs_raw_batch8"] = round(med("transformers", "c8") / med("raw", "batch8"), 3)
    if raw and med("transformers", "single"):
        ratios["transformers_single_vs_raw_single"] = round(med("transformers", "single") / med("raw", "single"), 3)
    res = {"machine": {"platform": platform.platform(), "threads": threads, "load_avg_1m_max": round(load, 2),
                       "loaded": load > 1.5},
           "work": {"max_tokens": args.tokens, "temperature": 0, "repeats": args.repeats, "levels": args.levels,
                    "prompt": PROMPTS[0], "system": SYSTEM},
           "summary": summary, "ratios": ratios, "short_streams": short, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(res, indent=2) + "\n")

    def cell(c: str, key: str, field: str = "tokens_per_s", fmt: str = "{:.1f}") -> str:
        v = summary.get(c, {}).get(key, {}).get(field)
        if not v:
            return "—"
        return f"{fmt.format(v['median'])} ({fmt.format(v['min'])}–{fmt.format(v['max'])})"

    names = {"anchor": "llama.cpp `llama-server` (anchor)", "llamacpp": "`tailor serve --engine llamacpp`",
             "transformers": "`tailor serve --engine transformers`", "raw": "raw `model.generate` (batch of 8)",
             "llamacpp@before": "`--engine llamacpp`, before (--before)",
             "transformers@before": "`--engine transformers`, before (--before)"}
    lines = ["| | single stream tok/s | single TTFT s | 8 streams tok/s | 8: p50 / p95 TTFT s | 32 streams tok/s "
             "| 32: p50 / p95 TTFT s | 4 adapters, 8 streams tok/s | peak RSS MB |", "|" + "---|" * 9]
    for c in [*runs, *(["raw"] if raw else [])]:
        if c == "raw":
            lines.append(f"| {names[c]} | {cell(c, 'single')} | | {cell(c, 'batch8')} | | | | | |")
            continue
        lines.append(
            f"| {names[c]} | {cell(c, 'single')} | {cell(c, 'single', 'ttft_p50_s', '{:.2f}')} | {cell(c, 'c8')} | "
            f"{cell(c, 'c8', 'ttft_p50_s', '{:.2f}')} / {cell(c, 'c8', 'ttft_p95_s', '{:.2f}')} | {cell(c, 'c32')} | "
            f"{cell(c, 'c32', 'ttft_p50_s', '{:.2f}')} / {cell(c, 'c32', 'ttft_p95_s', '{:.2f}')} | "
            f"{cell(c, 'adapters4_c8')} | {summary[c].get('peak_rss_mb', {}).get('median', '—')} |")
    policy = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} " if "OMP_WAIT_POLICY" in os.environ else ""
    reproduce = f"{policy}python bench/serve.py {shlex.join(sys.argv[1:])}"
    loaded = ("**Measured on a loaded machine** (1-minute load average reached "
              f"{load:.2f} on {threads} cores)." if load > 1.5 else f"1-minute load average at most {load:.2f}.")
    md = (f"# Serving over HTTP (bench/serve.py)\n\nThe packaged SmolLM2-135M-Instruct, {threads} threads, "
          f"{args.tokens} tokens per request (greedy; tokens counted from each server's usage), the official "
          f"`openai` SDK as client. Median (min–max) of {args.repeats} repeats; configurations alternate within each "
          f"repeat. {loaded}\n\n" + "\n".join(lines) + "\n\nRatios (medians): "
          + ", ".join(f"{k} = {v}" for k, v in ratios.items())
          + "\n\nStreams that ended before max_tokens (they would measure less work): "
          + (", ".join(f"{k} {v}" for k, v in short.items()) if any(short.values()) else "none")
          + f"\n\nOpenMP wait policy of both llama.cpp servers: {os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}."
          + f"\n\nReproduce: `{reproduce}` (see `--help` for the llama-server build).\n")
    (args.out / "serve.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
