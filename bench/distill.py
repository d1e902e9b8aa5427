"""Distillation on the demo: a tuned teacher distilled into the base through synthetic prompts only.

1. The teacher: the packaged SmolLM2 fine-tuned on the demo (`--teacher-run` reuses a finished demo run).
2. Synthetic prompts: `run_synth` evolves the train split's tickets with the teacher as generator.
3. `run_distill` with `prompts: synthetic`: the teacher answers the evolved tickets, schema-failing answers are
   dropped, the student (the base) is fine-tuned on the rest, optionally with logit distillation (`--logit`).
4. `eval_stage` scores the student and the base on the demo's held-out tickets; the teacher's answers to the same
   rows are scored by `run_distill` (teacher_eval). Student vs teacher vs base, same rows, same metrics.

Repeats rerun steps 3-4 with another training seed (the teacher and the synthetic prompts are shared).
Results: bench/results/distill.{json,md}.

    python bench/distill.py                                       # full settings (each repeat takes minutes)
    python bench/distill.py --teacher-steps 2 --student-steps 2 --seeds 3 --eval-rows 4 --repeats 1 \\
        --out /tmp/distill-smoke                                  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
METRICS = ("json_compliance", "field_accuracy_mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-run", help="A finished demo run folder to use as teacher (else one is trained).")
    ap.add_argument("--teacher-steps", type=int, default=110, help="Teacher training steps (about 3 demo epochs).")
    ap.add_argument("--student-steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=60, help="Train tickets evolved into synthetic prompts.")
    ap.add_argument("--eval-rows", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--logit", action="store_true", help="Add logit distillation (KL at T=2, alpha 0.5).")
    ap.add_argument("--out", default=str(HERE / "results" / "distill"))
    ap.add_argument("--base-model", help="Model folder instead of the packaged SmolLM2 (smoke tests: a tiny model).")
    ap.add_argument("--no-pii", action="store_true", help="Skip PII redaction (smoke tests; the demo has PII).")
    args = ap.parse_args()

    from llmtailor.config import load_config
    from llmtailor.data.synth import run_synth
    from llmtailor.pipeline import eval_stage, train_stage
    from llmtailor.train.distill import comparison, run_distill

    root = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    demo = resources.files("llmtailor") / "assets" / "demo"
    (root / "data").mkdir()
    (root / "data" / "tickets.jsonl").write_text((demo / "tickets.jsonl").read_text(encoding="utf-8"))
    (root / "ticket.schema.json").write_text((demo / "ticket.schema.json").read_text(encoding="utf-8"))
    cfg = yaml.safe_load((demo / "tailor.yaml").read_text(encoding="utf-8"))
    cfg["eval"].update(variants=["base", "tuned"], max_examples=args.eval_rows, gates=[],
                       regression={"enabled": False}, redteam={"enabled": False})
    cfg["registry"] = {"enabled": False}
    cfg["train"]["max_steps"] = args.teacher_steps
    cfg["data"]["pii"]["enabled"] = not args.no_pii
    if args.base_model:  # a tiny byte-level test model needs ~4x the demo's token budget for the same tickets
        cfg["model"]["base_model"] = str(Path(args.base_model).resolve())
        cfg["data"]["max_seq_len"] = 1536
    path = root / "tailor.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    t0 = time.perf_counter()
    if args.teacher_run:
        teacher_run = Path(args.teacher_run).resolve()
    else:
        teacher_run = train_stage(path, show_progress=True).run_dir
    teacher_s = time.perf_counter() - t0
    teacher_steps = json.loads((teacher_run / "run.json").read_text()).get("steps", args.teacher_steps)
    cfg["synth"] = {"generator": {"run": str(teacher_run)}, "max_seeds": args.seeds, "n_per_seed": 1,
                    "ops": ["constraints", "concretise", "breadth"], "max_new_tokens": 160,
                    "answer_max_new_tokens": 64}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    synth = run_synth(load_config(path), show_progress=True)
    synth_s = time.perf_counter() - t0

    rows = []
    for r in range(args.repeats):
        c = json.loads(json.dumps(cfg))
        c["train"].update(max_steps=args.student_steps, seed=42 + r)
        c["distill"] = {"teacher": {"run": str(teacher_run)}, "prompts": "synthetic", "max_new_tokens": 64,
                        "output": "data/distilled.jsonl",
                        "logit": {"enabled": args.logit, "temperature": 2.0, "alpha": 0.5}}
        path.write_text(yaml.safe_dump(c, sort_keys=False))
        t0 = time.perf_counter()
        result = run_distill(load_config(path), show_progress=True)
        eval_stage(path, run=str(result.run_dir), show_progress=False)
        table = comparison(result.run_dir)
        rows.append({"seed": 42 + r, "seconds": round(time.perf_counter() - t0, 1), "answers_kept": result.kept
                     or len((result.dataset_dir / "train.jsonl").read_text().splitlines()),
                     "dropped": dict(result.dropped),
                     **{f"{who}.{m}": table.get(who, {}).get(m) for who in ("base", "teacher", "student")
                        for m in METRICS}})
        print(json.dumps(rows[-1]))

    load = os.getloadavg()[0]
    summary = {}
    for key in rows[0]:
        if "." in key:
            xs = [x[key] for x in rows if x[key] is not None]
            summary[key] = ({"median": round(statistics.median(xs), 4), "min": round(min(xs), 4),
                             "max": round(max(xs), 4)} if xs else None)
    out = {"args": vars(args), "teacher_run": str(teacher_run), "teacher_train_seconds": round(teacher_s, 1),
           "teacher_steps": teacher_steps,
           "synth": synth.as_dict(), "synth_seconds": round(synth_s, 1), "runs": rows, "summary": summary,
           "load_avg_1min": load, "loaded_machine": load > 1.5}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    label = f"measured on a loaded machine, 1-min load {load:.1f}" if load > 1.5 else f"1-min load {load:.1f}"
    md = [f"# Distillation on the demo ({label})", "",
          f"Teacher: {teacher_run.name} ({teacher_steps} steps); student: the base, {args.student_steps} steps "
          f"on teacher answers to {synth.totals.get('kept', 0)} synthetic prompts; {args.repeats} repeat(s); "
          f"logit distillation {'on' if args.logit else 'off'}; {args.eval_rows} held-out tickets.", "",
          "| model | json_compliance median (min-max) | field_accuracy_mean median (min-max) |", "|---|---|---|"]
    for who in ("base", "teacher", "student"):
        md.append(f"| {who} | " + " | ".join(_fmt(summary.get(f"{who}.{m}")) for m in METRICS) + " |")
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _fmt(s: dict | None) -> str:
    return "-" if not s else f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


if __name__ == "__main__":
    main()
