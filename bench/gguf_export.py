"""GGUF export, measured on the demo: does llama.cpp answer the held-out tickets like transformers does, per file?

For a trained demo run (one is trained with `tailor init` + `tailor run` when none is given or found, ~10-15 min):
exports the LoRA adapter as a GGUF adapter (applied by llama.cpp on the packaged Q4_1 base), the merged model in f16,
and the merged model quantized by llama.cpp (q8_0, q4_k_m, q4_0 by default). For each file: size, export seconds,
greedy-token agreement with transformers (PEFT adapter on the fp32 cache folder; teacher-forced and free-running, see
llmtailor/export/verify.py), JSON compliance and field accuracy on the held-out rows (llmtailor.eval.metrics), and
the seconds each side took. Writes bench/results/gguf_export.{json,md}.

    python bench/gguf_export.py [--run-dir RUN] [--config tailor.yaml] [--quick N] [--quants q8_0,q4_k_m,q4_0]
                                [--workdir DIR] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def tailor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "llmtailor.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def find_or_train_run(workdir: Path) -> Path:
    """The newest completed demo run under workdir, or a new one (`tailor init demo` + `tailor run`)."""
    from llmtailor.runs import latest_run

    found = latest_run(workdir / "demo" / "runs", status="completed")
    if found is not None and (found / "adapter").exists():
        return found
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "demo" / "tailor.yaml").exists():
        res = tailor("init", "demo", cwd=workdir)
        if res.returncode:
            sys.exit(res.stderr)
    print("no trained demo run: training one with `tailor run` (about 10-15 minutes on 2 cores)", flush=True)
    res = tailor("run", "-c", "demo/tailor.yaml", "--json", cwd=workdir)
    if res.returncode not in (0, 3):  # 3: a gate failed; the run itself is usable
        sys.exit(res.stderr[-4000:])
    return Path(json.loads(res.stdout)["run_dir"])


def score(texts: list[str], refs: list[str], schema: dict | None) -> dict[str, Any]:
    """JSON compliance, field accuracy (mean over rows, as `tailor eval` reports it) and exact match."""
    from llmtailor.eval.metrics import score_examples

    agg, per = score_examples(texts, refs, schema, ["exact_match", "json_compliance", "field_accuracy"])
    fields = [sum(r["field_accuracy"].values()) / len(r["field_accuracy"]) for r in per if r.get("field_accuracy")]
    return {"json_compliance": agg.get("json_compliance"), "exact_match": agg.get("exact_match"),
            "field_accuracy_mean": sum(fields) / len(fields) if fields else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmtailor-gguf-bench"))
    parser.add_argument("--run-dir", type=Path, help="A trained demo run folder (default: find or train one).")
    parser.add_argument("--config", type=Path, help="Its tailor.yaml (default: two folders above the run).")
    parser.add_argument("--quick", type=int, default=0, help="Only the first N held-out prompts.")
    parser.add_argument("--quants", default="q8_0,q4_k_m,q4_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where gguf_export.{json,md} go.")
    args = parser.parse_args()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp's OpenMP threads must not spin on a shared CPU
    import llama_cpp
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmtailor.chat import prompt_ids
    from llmtailor.config import load_config
    from llmtailor.eval.metrics import load_schema
    from llmtailor.export.gguf import base_gguf, export_adapter_gguf, export_merged_gguf, file_size_mb
    from llmtailor.export.verify import compare, hf_greedy
    from llmtailor.models import load_tokenizer, resolve_model_dir
    from llmtailor.runs import read_run

    run_dir = (args.run_dir or find_or_train_run(args.workdir)).resolve()
    cfg = load_config(args.config or run_dir.parent.parent / "tailor.yaml")
    info = read_run(run_dir)
    rows = [json.loads(x) for x in (Path(info["dataset_dir"]) / "eval.jsonl").read_text().splitlines() if x.strip()]
    rows = rows[: cfg.eval.max_examples or None][: args.quick or None]
    schema = load_schema(cfg.eval.json_schema) if cfg.eval.json_schema else None
    max_new = cfg.eval.max_new_tokens
    folder = resolve_model_dir(cfg.model)
    tok = load_tokenizer(folder)
    eos = [tok.eos_token_id]
    prompts = [prompt_ids(tok, r["messages"][:-1]) for r in rows]
    refs_text = [r["messages"][-1]["content"] for r in rows]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    print(f"transformers fp32 + PEFT adapter: greedy answers to {len(rows)} held-out prompts", flush=True)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                                      run_dir / "adapter").eval()
    t0 = time.perf_counter()
    ref_ids = [hf_greedy(model, p, max_new, eos) for p in prompts]
    hf_s = time.perf_counter() - t0
    del model
    decode = [tok.decode(ids, skip_special_tokens=True).strip() for ids in ref_ids]
    n_tokens = sum(len(x) for x in ref_ids)
    variants: list[dict[str, Any]] = [{
        "name": "transformers fp32 + PEFT LoRA (reference)", "file": None, "size_mb": None, "export_s": None,
        "agreement": None, **score(decode, refs_text, schema), "generate_s": round(hf_s, 1)}]

    out_dir = args.workdir / "exports" / run_dir.name
    base = base_gguf(cfg.model)
    jobs: list[tuple[str, Any]] = [
        ("llama.cpp: packaged Q4_1 base + GGUF LoRA (f32)", lambda: (base, export_adapter_gguf(
            run_dir / "adapter", base, out_dir / "adapter-f32.gguf"))),
        ("llama.cpp: merged f16", lambda: (export_merged_gguf(run_dir / "adapter", cfg.model,
                                                               out_dir / "model-f16.gguf", "f16"), None)),
    ] + [(f"llama.cpp: merged {q} (llama.cpp quantizer)", lambda q=q: (export_merged_gguf(
        run_dir / "adapter", cfg.model, out_dir / f"model-{q}.gguf", q), None)) for q in args.quants.split(",") if q]
    for name, job in jobs:
        print(f"{name}: exporting", flush=True)
        t0 = time.perf_counter()
        model_path, lora = job()
        export_s = time.perf_counter() - t0
        written = lora or model_path
        llm = llama_cpp.Llama(model_path=str(model_path), lora_path=str(lora) if lora else None, n_ctx=1024,
                              n_batch=512, logits_all=True, verbose=False, n_threads=args.threads,
                              n_threads_batch=args.threads, seed=0)
        t0 = time.perf_counter()
        agreement, answers = compare(llm, prompts, ref_ids, max_new, eos)
        compare_s = time.perf_counter() - t0
        llm.close()
        texts = [tok.decode(ids, skip_special_tokens=True).strip() for ids in answers]
        variants.append({"name": name, "file": str(written), "size_mb": file_size_mb(written),
                         "export_s": round(export_s, 1), "agreement": agreement.as_dict(),
                         **score(texts, refs_text, schema), "verify_s": round(compare_s, 1)})
        print(f"  {variants[-1]['agreement']} compliance {variants[-1]['json_compliance']}", flush=True)

    record = {
        "command": " ".join(["python bench/gguf_export.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "python": platform.python_version(), "llama_cpp_python": llama_cpp.__version__,
                    "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2)},
        "run": str(run_dir), "base_gguf": str(base), "held_out_prompts": len(rows), "max_new_tokens": max_new,
        "reference_tokens": n_tokens, "variants": variants,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gguf_export.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.results / "gguf_export.md").write_text(markdown(record))
    print(markdown(record))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# GGUF export: llama.cpp vs transformers on the demo's held-out tickets", "",
        f"Command: `{r['command']}`; run `{Path(r['run']).name}`, {r['held_out_prompts']} held-out prompts, greedy, "
        f"max {r['max_new_tokens']} new tokens ({r['reference_tokens']} reference tokens); {m['cpus']} CPUs, "
        f"{m['threads']} threads, llama-cpp-python {m['llama_cpp_python']}, load average {m['load_avg_before']} "
        f"before / {m['load_avg_after']} after.", "",
        "Agreement: share of answer positions where llama.cpp's greedy token is transformers' (teacher-forced: "
        "llama.cpp reads transformers' answer; free-running: each generates its own). Compliance and field accuracy "
        "are `tailor eval`'s metrics on the same rows.", "",
        "| file | size MB | export s | agreement (forced) | agreement (free) | identical answers | JSON compliance "
        "| field accuracy | exact match |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in r["variants"]:
        a = v["agreement"] or {}
        ident = f"{a['identical_answers']}/{a['answers']}" if a else "-"
        lines.append(f"| {v['name']} | {v['size_mb'] if v['size_mb'] is not None else '-'} | "
                     f"{v['export_s'] if v['export_s'] is not None else '-'} | {_pct(a.get('teacher_forced'))} | "
                     f"{_pct(a.get('free_running'))} | {ident} | {_pct(v['json_compliance'])} | "
                     f"{_pct(v['field_accuracy_mean'])} | {_pct(v['exact_match'])} |")
    if max(m["load_avg_before"], m["load_avg_after"]) > m["cpus"]:
        lines += ["", f"The machine was shared while this ran (load average above its {m['cpus']} CPUs): the seconds "
                  "are upper bounds; agreement and metrics do not depend on load."]
    lines += ["", "Merged exports include the merge (load fp32 base + adapter, merge_and_unload, write f16) before "
              "llama.cpp's quantizer runs; the GGUF LoRA export reads only the adapter and the base GGUF's header.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
