"""Training throughput: `tailor train` against a plain TRL + PEFT script, same LoRA config, same data, same run.

Each trainer runs in its own subprocess (so peak RSS is its own), alternating A/B/A/B to spread machine
noise; tokens/s = tokens the trainer reports (TRL's `num_tokens`) / train runtime. Results go to
bench/results/train_throughput.{json,md}.

    python bench/train_throughput.py --steps 6 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PLAIN_TRL = r'''
import json, sys, time
from pathlib import Path
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, data_file, out_dir, steps, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(torch.get_num_threads())
rows = [json.loads(l) for l in open(data_file)]
# The usual way: conversational prompt/completion rows, TRL renders them with the chat template.
ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = SFTConfig(output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
                 lr_scheduler_type="linear", warmup_steps=0.05, logging_steps=1, save_strategy="no", seed=42,
                 use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", max_length=320,
                 disable_tqdm=True)
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
out = trainer.train()
logs = [h for h in trainer.state.log_history if "num_tokens" in h]
print("RESULT " + json.dumps({"num_tokens": logs[-1]["num_tokens"], "runtime_s": out.metrics["train_runtime"],
                             "final_loss": logs[-1].get("loss")}))
'''

TAILOR = r'''
import json, sys
from pathlib import Path
from llmtailor.config import load_config
from llmtailor.train.sft import train

cfg_path, data_dir, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = load_config(cfg_path)
cfg.train.max_steps, cfg.train.batch_size, cfg.train.save_steps = steps, batch, 10_000
result = train(cfg, Path(data_dir), "bench", show_progress=False)
rows = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
logs = [r for r in rows if "num_tokens" in r]
end = [r for r in rows if "train_runtime" in r][-1]
print("RESULT " + json.dumps({"num_tokens": logs[-1]["num_tokens"], "runtime_s": end["train_runtime"],
                             "final_loss": logs[-1].get("loss")}))
'''


def run_child(code: str, args: list[str]) -> dict:
    """Run one trainer in a fresh interpreter; return its RESULT line plus its peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child failed ({proc.returncode})")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["tokens_per_s"] = result["num_tokens"] / result["runtime_s"]
    # ru_maxrss of children is the max over all children so far; children run one at a time and each
    # loads the same model, so we report the running max only when it grew, else the previous max.
    result["peak_rss_mb"] = round(max(peak_kb, before) / 1024, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    from llmtailor.cli.project import DEMO_FILES  # noqa: F401  (ensures the package imports)
    from llmtailor.config import load_config
    from llmtailor.models import resolve_model_dir
    from llmtailor.pipeline import prepare_stage

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    subprocess.run([sys.executable, "-m", "llmtailor.cli.main", "init", str(work / "demo")], check=True)
    cfg_path = work / "demo" / "tailor.yaml"
    cfg = load_config(cfg_path)
    version = prepare_stage(cfg, show_progress=False)
    model_dir = resolve_model_dir(cfg.model)

    results: dict[str, list[dict]] = {"llmtailor": [], "trl": []}
    for i in range(args.repeats):
        for name in ("llmtailor", "trl") if i % 2 == 0 else ("trl", "llmtailor"):
            if name == "llmtailor":
                r = run_child(TAILOR, [str(cfg_path), str(version.path), str(args.steps), str(args.batch)])
            else:
                r = run_child(PLAIN_TRL, [str(model_dir), str(version.path / "train.jsonl"), str(work / f"trl{i}"),
                                          str(args.steps), str(args.batch)])
            results[name].append(r)
            print(f"{name:9s} run {i}: {r['tokens_per_s']:.1f} tokens/s, {r['runtime_s']:.1f} s", flush=True)

    # Peak memory per trainer: measured in separate single-trainer children so each number is its own.
    mem = {}
    for name in ("llmtailor", "trl"):
        code = TAILOR if name == "llmtailor" else PLAIN_TRL
        cmd = [sys.executable, "-c",
               "import resource,subprocess,sys;"
               "subprocess.run([sys.executable,'-c',sys.argv[1],*sys.argv[2:]],check=True,capture_output=True);"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", code]
        extra = ([str(cfg_path), str(version.path), "2", str(args.batch)] if name == "llmtailor" else
                 [str(model_dir), str(version.path / "train.jsonl"), str(work / "trlmem"), "2", str(args.batch)])
        out = subprocess.run(cmd + extra, capture_output=True, text=True, cwd=ROOT, check=True)
        mem[name] = round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)

    tps = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}",
        "config": {"method": "lora", "r": 16, "alpha": 32, "target": "all-linear", "batch": args.batch,
                   "steps": args.steps, "max_len": 320, "data": "demo tickets (prepared)", "dtype": "float32"},
        "runs": results,
        "median_tokens_per_s": tps,
        "speed_ratio_llmtailor_over_trl": round(tps["llmtailor"] / tps["trl"], 3),
        "peak_rss_mb": mem,
        "memory_ratio_llmtailor_over_trl": round(mem["llmtailor"] / mem["trl"], 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = [
        "# Training throughput: llmtailor vs plain TRL + PEFT",
        "",
        f"Measured {summary['date']} on {summary['machine']}; `python bench/train_throughput.py --steps "
        f"{args.steps} --repeats {args.repeats}`.",
        f"Same LoRA config (r16/alpha32, all linear, batch {args.batch}, fp32 CPU), same prepared demo data, "
        "each trainer in its own process, alternating order.",
        "",
        "| trainer | median tokens/s | peak RSS MB |",
        "|---|---:|---:|",
        f"| llmtailor (`tailor train`) | {tps['llmtailor']:.1f} | {mem['llmtailor']} |",
        f"| plain TRL + PEFT | {tps['trl']:.1f} | {mem['trl']} |",
        "",
        f"**Speed ratio llmtailor / TRL: {summary['speed_ratio_llmtailor_over_trl']}x**; "
        f"memory ratio: {summary['memory_ratio_llmtailor_over_trl']}x.",
    ]
    (args.out / "train_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
