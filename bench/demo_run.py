"""The README's main job, measured: `tailor init` + `tailor run` on the demo project, as a new user runs it.

Records wall time per stage, peak RSS of `tailor run`, the ladder on the held-out tickets with the gates, the
machine and its load, and writes bench/results/demo_run.{json,md}. The base model is the baseline: every metric is
reported next to it. Then the same run is evaluated again with `model.precision: fp32` (what `tailor eval` did
before bf16 inference), so the eval stage's seconds before and after come from the same benchmark run.

    python bench/demo_run.py [--workdir /tmp/demo-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHOWN = ["json_compliance", "field_accuracy_mean", "exact_match", "token_f1", "rouge_l", "bleu", "eval_loss",
         "perplexity"]


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
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # `tailor init` is far smaller
    if res.returncode:
        sys.exit(res.stderr[-4000:])
    out = json.loads(res.stdout)
    run = json.loads((Path(out["run_dir"]) / "run.json").read_text())

    # The eval stage again on a copy of the run, in fp32 (the previous behaviour), same machine, same benchmark run.
    run_dir = Path(out["run_dir"])
    fp32_dir = run_dir.with_name(run_dir.name + "-fp32eval")
    shutil.copytree(run_dir, fp32_dir, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    cfg_text = (args.workdir / "demo" / "tailor.yaml").read_text()
    fp32_cfg = args.workdir / "demo" / "tailor-fp32.yaml"
    fp32_cfg.write_text(cfg_text.replace("model:\n", "model:\n  precision: fp32\n", 1))
    t0 = time.perf_counter()
    res32 = tailor("eval", "-c", str(fp32_cfg), "--run", fp32_dir.name, "--json", cwd=args.workdir)
    fp32_eval_s = time.perf_counter() - t0
    if res32.returncode not in (0, 3):
        sys.exit(res32.stderr[-4000:])
    results32 = json.loads((fp32_dir / "eval" / "results.json").read_text())
    results = json.loads((Path(out["run_dir"]) / "eval" / "results.json").read_text())
    card = json.loads((Path(run["dataset_dir"]) / "card.json").read_text())
    record = {
        "command": "python bench/demo_run.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2)},
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
        "eval_seconds": {"bf16 (tailor run's eval stage)": out["stage_seconds"].get("eval"),
                         "fp32 (tailor eval, model.precision: fp32)": round(fp32_eval_s, 1)},
        "eval_precision": run.get("eval_precision"),
        "gates": results.get("gates"),
        "fp32_eval_variants": {v: {k: results32["variants"][v].get(k) for k in SHOWN} for v in results32["variants"]},
        "stage_seconds": out["stage_seconds"],
        "train": {k: run.get(k) for k in ("steps", "first_loss", "final_loss", "train_tokens_per_s", "method",
                                          "precision", "precision_reason", "padding_share", "batching",
                                          "train_runtime_s")},
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
        f"Whole loop: **{wall / 60:.1f} min** wall ({stages}); peak RSS of `tailor run` **{peak_mb / 1024:.2f} GB**.",
        f"Training: precision {run.get('precision')} ({run.get('precision_reason')}); {run.get('batching')}, "
        f"padding share {run.get('padding_share')}.",
        f"Eval stage: {out['stage_seconds'].get('eval'):.0f} s in bf16 (`model.precision: auto`) vs "
        f"{fp32_eval_s:.0f} s for the same evaluation in fp32 (`tailor eval` on a copy of the run, same benchmark "
        "run): one pair, no repeats; not a speed result.",
        "Gates: " + "; ".join(f"{g['text']}: {'pass' if g['passed'] else 'FAIL'} ({g['reason']})"
                              for g in (results.get("gates") or {}).get("results", [])) + ".",
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
