"""Training throughput: `tailor train` against plain TRL + PEFT on the same prepared demo data, in the same run.

Both sides see the same examples in the same order (random sampling with the same data seed; llmtailor's length
buckets are off here so the order matches; the per-step token counts are compared to prove it). Each trainer runs
in its own interpreter, so peak RSS (os.wait4) is its own; the two alternate A/B, B/A, ... for --repeats rounds.
tokens/s = tokens the trainer reports (TRL's `num_tokens`) / train runtime. The plain side is TRL's defaults on
CPU: fp32, every position through the LM head. Results: bench/results/train_throughput.{json,md}.

    python bench/train_throughput.py --steps 8 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
lora = json.loads(sys.argv[6])  # the demo config's LoRA settings: both sides train the same adapter
torch.set_num_threads(torch.get_num_threads())
# Rows tokenized once by the parent (input_ids + completion_mask): both sides train on identical ids and labels.
ds = Dataset.from_list([json.loads(l) for l in open(data_file)])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = SFTConfig(output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
                 lr_scheduler_type="linear", warmup_steps=0.05, logging_steps=1, save_strategy="no", seed=42,
                 use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", max_length=320,
                 disable_tqdm=True, data_seed=42, completion_only_loss=True)
peft = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["target"],
                  task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
out = trainer.train()
logs = [h for h in trainer.state.log_history if "num_tokens" in h]
print("RESULT " + json.dumps({"num_tokens": logs[-1]["num_tokens"], "runtime_s": out.metrics["train_runtime"],
                             "losses": [h["loss"] for h in logs], "tokens": [h["num_tokens"] for h in logs]}))
'''

TAILOR = r'''
import json, sys
from llmtailor.cpu_memory import tune
tune()  # as the `tailor` CLI does before torch loads
from pathlib import Path
from llmtailor.config import load_config
from llmtailor.train.sft import train

cfg_path, data_dir, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = load_config(cfg_path)
cfg.train.max_steps, cfg.train.batch_size, cfg.train.save_steps = steps, batch, 10_000
cfg.train.group_by_length = sys.argv[5] == "buckets"
cfg.train.rehearsal = 0  # the demo's rehearsal rows would be extra work the TRL side does not do
result = train(cfg, Path(data_dir), "bench", show_progress=False)
rows = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
logs = [r for r in rows if "num_tokens" in r]
end = [r for r in rows if "train_runtime" in r][-1]
print("RESULT " + json.dumps({"num_tokens": logs[-1]["num_tokens"], "runtime_s": end["train_runtime"],
                             "losses": [r["loss"] for r in logs], "tokens": [r["num_tokens"] for r in logs]}))
'''


PEAK = """
import resource
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_child(code: str, args: list[str]) -> dict:
    """Run one trainer in a fresh interpreter; return its RESULT line plus its own peak RSS."""
    # The child reports its own peak RSS (ru_maxrss of RUSAGE_SELF) on its RESULT line.
    code = code + PEAK
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    out, err = proc.stdout, proc.stderr
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"child failed ({proc.returncode})")
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["tokens_per_s"] = result["num_tokens"] / result["runtime_s"]
    result["peak_rss_mb"] = round(int(next(ln for ln in out.splitlines() if ln.startswith("PEAK ")).split()[1]) / 1024,
                                  1)
    result["tail_loss"] = statistics.fmean(result["losses"][-3:])
    return result


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--render", type=Path, default=None, help="only rewrite the tables from a results JSON")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        args.steps, args.repeats = saved["config"]["steps"], len(saved["runs"]["trl"])
        render(args, saved["runs"], saved["config"], saved["load_average_before"], saved["load_average_after"],
               saved["date"])
        return

    from llmtailor.config import load_config
    from llmtailor.models import resolve_model_dir
    from llmtailor.pipeline import prepare_stage

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    subprocess.run([sys.executable, "-m", "llmtailor.cli.main", "init", str(work / "demo")], check=True,
                   capture_output=True)
    cfg_path = work / "demo" / "tailor.yaml"
    cfg = load_config(cfg_path)
    version = prepare_stage(cfg, show_progress=False)
    model_dir = resolve_model_dir(cfg.model)
    from llmtailor.models import load_tokenizer
    from llmtailor.train.dataset import load_rows, tokenize_rows

    tokens_file = work / "tokens.jsonl"
    tokenized = tokenize_rows(load_rows(version.path / "train.jsonl"), load_tokenizer(cfg.model), 320)
    tokens_file.write_text("".join(json.dumps(r) + "\n" for r in tokenized), encoding="utf-8")

    t = cfg.train
    lora = {"r": t.lora_r, "alpha": t.lora_alpha, "dropout": t.lora_dropout, "target": t.target_modules}
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {"llmtailor": [], "trl": []}
    for i in range(args.repeats):
        for name in ("llmtailor", "trl") if i % 2 == 0 else ("trl", "llmtailor"):
            if name == "llmtailor":
                r = run_child(TAILOR, [str(cfg_path), str(version.path), str(args.steps), str(args.batch), "same"])
            else:
                r = run_child(PLAIN_TRL, [str(model_dir), str(tokens_file), str(work / f"trl{i}"),
                                          str(args.steps), str(args.batch), json.dumps(lora)])
            results[name].append(r)
            print(f"{name:9s} run {i}: {r['tokens_per_s']:.1f} tokens/s, {r['runtime_s']:.1f} s, "
                  f"peak {r['peak_rss_mb']:.0f} MB, loss {r['tail_loss']:.4f}", flush=True)
    load_after = os.getloadavg()
    render(args, results, {"method": "lora", **lora, "batch": args.batch, "steps": args.steps, "max_len": 320,
                           "data": "demo tickets (prepared)"}, load_before, load_after, time.strftime("%Y-%m-%d %H:%M"))


def render(args: argparse.Namespace, results: dict[str, list[dict]], config: dict, load_before: Any,
           load_after: Any, date: str) -> None:
    """Summary statistics, targets and the Markdown table from the per-run results."""
    lora = {k: config[k] for k in ("r", "alpha", "dropout", "target")}
    same_order = all(r["tokens"] == results["trl"][0]["tokens"] for v in results.values() for r in v)
    tps = {k: spread([r["tokens_per_s"] for r in v]) for k, v in results.items()}
    rss = {k: spread([r["peak_rss_mb"] for r in v]) for k, v in results.items()}
    loss = {k: spread([r["tail_loss"] for r in v]) for k, v in results.items()}
    speed = tps["llmtailor"]["median"] / tps["trl"]["median"]
    mem = rss["llmtailor"]["median"] / rss["trl"]["median"]
    loss_gap = abs(loss["llmtailor"]["median"] - loss["trl"]["median"]) / loss["trl"]["median"]
    worst_spread = max(v["max"] / v["min"] for v in tps.values())
    summary = {
        "date": date,
        "machine": f"{platform.machine()} cores={os.cpu_count()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "config": config,
        "same_examples_same_order": same_order,
        "runs": results,
        "tokens_per_s": tps, "peak_rss_mb": rss, "tail_loss": loss,
        "speed_ratio": round(speed, 3), "rss_ratio": round(mem, 3), "loss_gap": round(loss_gap, 4),
        "worst_repeat_spread": round(worst_spread, 2),
        "targets": {"speed_ratio >= 2.5": speed >= 2.5, "rss_ratio <= 0.6": mem <= 0.6, "loss_gap <= 0.02":
                    loss_gap <= 0.02},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")

    def row(label: str, key: str) -> str:
        t, m, lo = tps[key], rss[key], loss[key]
        return (f"| {label} | {t['median']:.1f} ({t['min']:.1f}–{t['max']:.1f}) | {m['median']:.0f} "
                f"({m['min']:.0f}–{m['max']:.0f}) | {lo['median']:.4f} |")

    loaded = max(load_before[0], load_after[0]) > 1.5  # the project's rule for "measured on a loaded machine"
    LOADED_NOTE = (": measured on a loaded machine (1-min load above 1.5 on 2 cores), read absolute figures with care;"  # noqa: N806
                   " the ratio compares sides measured alternately in the same pass")
    md = [
        "# Training throughput: llmtailor vs plain TRL + PEFT",
        "",
        f"Measured {summary['date']} on {summary['machine']}: `python bench/train_throughput.py --steps {args.steps} "
        f"--repeats {args.repeats}`. Load average before/after: {summary['load_average_before']} / "
        f"{summary['load_average_after']}{LOADED_NOTE if loaded else ''}.",
        f"LoRA r{lora['r']}/alpha{lora['alpha']}/dropout {lora['dropout']} on {lora['target']}, "
        f"batch {args.batch}, {args.steps} steps, the prepared demo tickets; "
        f"each trainer in its own process, alternating order, {args.repeats} repeats each. Same examples in the same "
        f"order on both sides: {'yes (identical per-step token counts)' if same_order else 'NO'}.",
        "Both sides get the same token ids and assistant-only labels (tokenized once by llmtailor's renderer). "
        "TRL side: TRL's defaults on CPU (fp32, every position projected by the LM head). llmtailor side: `tailor "
        "train` defaults (bf16 autocast where the CPU has native BF16, frozen base in bf16, adapter matmuls in bf16 "
        "with fp32 sums, LM head only at label positions, llmtailor's CPU attention, padding-free batches, the "
        "allocator settings of llmtailor/cpu_memory.py), length buckets off so the order matches.",
        "",
        "| trainer | tokens/s median (min–max) | peak RSS MB median (min–max) | loss, mean of last 3 steps |",
        "|---|---:|---:|---:|",
        row("llmtailor (`tailor train`)", "llmtailor"),
        row("plain TRL + PEFT", "trl"),
        "",
        f"**Speed llmtailor / TRL: {speed:.2f}x** (target 2.5x); peak RSS ratio {mem:.2f}x (target 0.6x); "
        f"final loss gap {loss_gap * 100:.2f}% (target 2%). Widest max/min spread over one side's repeats: "
        f"{worst_spread:.2f}x.",
    ]
    (args.out / "train_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
