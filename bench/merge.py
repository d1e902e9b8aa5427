"""Two task adapters merged (TIES, and linear as the plain baseline) vs each adapter alone, scored on both tasks.

Task A: the demo's ticket triage (JSON: schema compliance, field accuracy on its held-out tickets). Task B: Banking77
intent classification with a short system prompt (accuracy on a stratified test subset; reads
/work/shared/data/banking77 like bench/banking77.py). Each adapter is trained by `llmtailor.train.sft.train` on its own
task with the same LoRA settings (rank, targets), merged by `llmtailor.merge.adapters.merge` (PEFT's
`add_weighted_adapter`), and every variant answers the same prompts greedily. One repeat per seed.

    python bench/merge.py [--repeats 1] [--demo-steps 36] [--bank-per-class 4] [--bank-test-per-class 1]
    python bench/merge.py --tiny   # minutes: proves the pipeline, figures meaningless
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from banking77 import DATA, TUNED_SYSTEM, chat_row, read_csv, shown, stratified  # noqa: E402

VARIANTS = ("base", "triage", "banking", "ties", "linear")


def _cfg_with(cfg, **sections):
    update = {name: getattr(cfg, name).model_copy(update=fields) for name, fields in sections.items()}
    new = cfg.model_copy(update=update)
    new._path = cfg.path
    return new


def score_variant(cfg, adapter: Path | None, demo_rows: list[dict], bank_rows: list[dict], labels: list[str],
                  schema: dict) -> dict:
    from llmtailor.eval.labels import label_metrics
    from llmtailor.eval.metrics import score_examples
    from llmtailor.generate import generate
    from llmtailor.models import load_model

    model, tok = load_model(cfg.model, adapter=adapter)
    demo_prompts = [r["messages"][:-1] for r in demo_rows]
    demo_refs = [r["messages"][-1]["content"] for r in demo_rows]
    preds = generate(model, tok, demo_prompts, max_new_tokens=cfg.eval.max_new_tokens, batch_size=8)
    agg, _ = score_examples(preds, demo_refs, schema, ["json_compliance", "field_accuracy"])
    fields = agg.get("field_accuracy") or {}
    bank_preds = generate(model, tok, [r["messages"][:-1] for r in bank_rows], max_new_tokens=12, batch_size=16)
    lab, _ = label_metrics(bank_preds, [r["messages"][-1]["content"] for r in bank_rows], labels)
    return {"triage.json_compliance": agg.get("json_compliance"),
            "triage.field_accuracy_mean": sum(fields.values()) / len(fields) if fields else None,
            "banking.accuracy": lab.get("accuracy")}


def one_repeat(demo_cfg, demo_version, bank_cfg, bank_version, seed: int, args, labels, schema, say) -> dict:
    from llmtailor.merge.adapters import merge
    from llmtailor.train.dataset import load_rows
    from llmtailor.train.sft import train

    t0 = time.perf_counter()
    a = train(_cfg_with(demo_cfg, train={"seed": seed}), demo_version.path, demo_version.hash, show_progress=False)
    b = train(_cfg_with(bank_cfg, train={"seed": seed}), bank_version.path, bank_version.hash, show_progress=False)
    train_s = round(time.perf_counter() - t0, 1)
    merged = {
        "ties": merge(demo_cfg, [str(a.run_dir), str(b.run_dir)], method="ties", weights=[1.0, 1.0],
                      density=args.density).output_dir,
        "linear": merge(demo_cfg, [str(a.run_dir), str(b.run_dir)], method="linear", weights=[0.5, 0.5]).output_dir,
    }
    adapters = {"base": None, "triage": a.adapter_dir, "banking": b.adapter_dir, **merged}
    demo_rows = load_rows(demo_version.path / "eval.jsonl")[: args.demo_eval_rows]
    bank_rows = load_rows(bank_version.path / "eval.jsonl")[: args.bank_eval_rows or None]
    out = {"seed": seed, "train_s": train_s, "scores": {}}
    for name in VARIANTS:
        t0 = time.perf_counter()
        out["scores"][name] = score_variant(demo_cfg, adapters[name], demo_rows, bank_rows, labels, schema)
        out["scores"][name]["eval_s"] = round(time.perf_counter() - t0, 1)
        say(f"seed {seed} {name}: {out['scores'][name]}")
    out["n"] = {"triage": len(demo_rows), "banking": len(bank_rows)}
    return out


def bank_project(work: Path, args) -> Path:
    import yaml

    labels = sorted({lab for _, lab in read_csv(DATA / "train.csv")})
    train_rows = stratified(read_csv(DATA / "train.csv"), args.bank_per_class, 0)
    test_rows = stratified(read_csv(DATA / "test.csv"), args.bank_test_per_class, 0)
    for name, rows in (("bank_train.jsonl", train_rows), ("bank_test.jsonl", test_rows)):
        (work / name).write_text("".join(json.dumps(chat_row(TUNED_SYSTEM, t, lab)) + "\n" for t, lab in rows))
    (work / "labels.json").write_text(json.dumps([shown(lab) for lab in labels]))
    cfg = yaml.safe_load((work / "demo" / "tailor.yaml").read_text())
    cfg.update({"project": "banking", "runs_dir": str(work / "bank_runs")})
    cfg["data"] = {"sources": [str(work / "bank_train.jsonl")], "test_sources": [str(work / "bank_test.jsonl")],
                   "max_seq_len": 160, "dedup": {"enabled": True, "threshold": 0.98}, "pii": {"enabled": False},
                   "output_dir": str(work / "bank_datasets")}
    path = work / "bank.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmtailor-merge-bench"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--demo-steps", type=int, default=36)
    parser.add_argument("--bank-steps", type=int, default=40)
    parser.add_argument("--bank-per-class", type=int, default=4)
    parser.add_argument("--bank-test-per-class", type=int, default=1)
    parser.add_argument("--demo-eval-rows", type=int, default=40)
    parser.add_argument("--bank-eval-rows", type=int, default=0, help="cap on Banking77 test rows (0: all)")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default="merge")
    args = parser.parse_args()
    if args.tiny:
        args.demo_steps, args.bank_steps, args.bank_per_class, args.demo_eval_rows = 2, 2, 1, 4
        args.bank_eval_rows = 8
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from rich.console import Console

    from llmtailor.config import load_config
    from llmtailor.eval.metrics import load_schema
    from llmtailor.pipeline import prepare_stage

    console = Console(stderr=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "llmtailor.cli.main", "init", "demo"], cwd=args.workdir, check=True,
                   capture_output=True)
    demo_cfg = load_config(args.workdir / "demo" / "tailor.yaml")
    common = {"max_steps": None, "save_steps": 10_000, "epochs": 3.0}
    demo_cfg = _cfg_with(demo_cfg, train={**common, "max_steps": args.demo_steps}, registry={"enabled": False})
    bank_cfg = load_config(bank_project(args.workdir, args))
    bank_cfg = _cfg_with(bank_cfg, train={**common, "max_steps": args.bank_steps}, registry={"enabled": False})
    labels = json.loads((args.workdir / "labels.json").read_text())
    schema = load_schema(demo_cfg.eval.json_schema)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    demo_version = prepare_stage(demo_cfg, show_progress=False)
    bank_version = prepare_stage(bank_cfg, show_progress=False)
    repeats = [one_repeat(demo_cfg, demo_version, bank_cfg, bank_version, seed, args, labels, schema, console.print)
               for seed in range(args.repeats)]
    summary = {}
    for v in VARIANTS:
        for m in ("triage.json_compliance", "triage.field_accuracy_mean", "banking.accuracy"):
            vals = [r["scores"][v][m] for r in repeats if r["scores"][v].get(m) is not None]
            if vals:
                summary[f"{v}.{m}"] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    data = {"command": "python bench/merge.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_avg_1m": [load_before, os.getloadavg()[0]],
            "wall_s": round(time.perf_counter() - started, 1), "args": vars(args) | {"workdir": str(args.workdir)},
            "per_repeat": repeats, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_md(RESULTS / f"{args.out}.md", data)
    console.print(f"wrote bench/results/{args.out}.md ({data['wall_s']} s)")


def write_md(path: Path, data: dict) -> None:
    a, s = data["args"], data["summary"]
    loaded = "measured on a loaded machine; " if max(data["load_avg_1m"]) > 1.5 else ""
    n = data["per_repeat"][0]["n"] if data["per_repeat"] else {}
    lines = [
        "# Merging two task adapters: TIES and linear vs each adapter alone",
        "",
        f"`{data['command']}`: {a['repeats']} repeat(s), {loaded}1-minute load average {data['load_avg_1m'][0]:.1f} "
        f"before, {data['load_avg_1m'][1]:.1f} after; {data['machine']}; wall {data['wall_s']} s.",
        f"Triage adapter: demo, {a['demo_steps']} steps of batch 8; banking adapter: Banking77, {a['bank_per_class']}"
        f" rows per intent, {a['bank_steps']} steps; both LoRA r16 all-linear on SmolLM2-135M-Instruct. TIES: "
        f"weights 1/1, density {a['density']}; linear: weights 0.5/0.5. Held-out: {n.get('triage')} demo tickets, "
        f"{n.get('banking')} Banking77 test messages; greedy. Median (min-max) over repeats.",
        "",
        "| variant | triage: JSON compliance | triage: field accuracy | banking: accuracy |",
        "|---|---|---|---|",
    ]
    for v in VARIANTS:
        cells = []
        for m in ("triage.json_compliance", "triage.field_accuracy_mean", "banking.accuracy"):
            x = s.get(f"{v}.{m}")
            cells.append("-" if x is None else f"{x['median']:.3f} ({x['min']:.3f}-{x['max']:.3f})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
