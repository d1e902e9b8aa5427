"""The README's main job, measured: `tailor init` + `tailor run` on the demo project, as a new user runs it.

Records wall time per stage, the base-vs-tuned metrics on the held-out tickets, the machine and its load, and
writes bench/results/demo_run.{json,md}. The base model is the baseline: every metric is reported next to it.

    python bench/demo_run.py [--workdir /tmp/demo-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHOWN = ["json_compliance", "field_accuracy", "exact_match", "token_f1", "rouge_l", "bleu", "eval_loss", "perplexity"]


def tailor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "llmtailor.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmtailor-demo-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    load_before = os.getloadavg()[0]
    res = tailor("init", "demo", cwd=args.workdir)
    if res.returncode:
        sys.exit(res.stderr)
    started = time.perf_counter()
    res = tailor("run", "-c", "demo/tailor.yaml", "--json", cwd=args.workdir)
    wall = time.perf_counter() - started
    if res.returncode:
        sys.exit(res.stderr[-4000:])
    out = json.loads(res.stdout)
    run = json.loads((Path(out["run_dir"]) / "run.json").read_text())
    results = json.loads((Path(out["run_dir"]) / "eval" / "results.json").read_text())
    card = json.loads((Path(run["dataset_dir"]) / "card.json").read_text())
    record = {
        "command": "python bench/demo_run.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2)},
        "wall_s": round(wall, 1),
        "stage_seconds": out["stage_seconds"],
        "train": {k: run.get(k) for k in ("steps", "first_loss", "final_loss", "train_tokens_per_s", "method")},
        "data": {k: card.get(k) for k in ("rows_in", "rows_kept", "train_rows", "eval_rows", "dropped", "pii_counts")},
        "n_examples": results["n_examples"],
        "variants": results["variants"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_run.json").write_text(json.dumps(record, indent=2) + "\n")
    variants = list(results["variants"])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in out["stage_seconds"].items())
    lines = [
        "# Demo run: `tailor init demo && tailor run -c demo/tailor.yaml`",
        "",
        f"Measured with `python bench/demo_run.py` on {os.cpu_count()} CPU cores ({platform.platform()}); "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the machine slows "
        "every stage).",
        "",
        f"Whole loop: **{wall / 60:.1f} min** wall ({stages}).",
        f"Data: {card.get('rows_in')} rows in, {card.get('rows_kept')} kept, {card.get('train_rows')} train / "
        f"{card.get('eval_rows')} held out. Training: {run.get('steps')} LoRA steps, loss "
        f"{run.get('first_loss'):.3f} -> {run.get('final_loss'):.3f}, {run.get('train_tokens_per_s')} tokens/s.",
        "",
        f"Held-out tickets ({results['n_examples']}, greedy decoding), base model as the baseline:",
        "",
        "| metric | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for key in SHOWN:
        vals = [results["variants"][v].get(key) for v in variants]
        if all(isinstance(x, int | float) for x in vals):
            lines.append(f"| {key} | " + " | ".join(f"{x:.3f}" for x in vals) + " |")
    (RESULTS / "demo_run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
