"""Synthetic data on the demo: 50 human rows vs 50 human + Evol-Instruct rows vs all human rows.

Every arm trains the packaged SmolLM2 with the demo's LoRA settings (same max_steps) and is scored on the same
held-out tickets (the demo's eval split, given to every arm as `data.test_sources`), through llmtailor's own
pipeline: `prepare_stage`, `train_stage`, `eval_stage` (variant `tuned` only), `run_synth`. The evolved rows are
made from the 50 human rows by `synth.generator` (default: the packaged base model itself; `--generator-run` points
at a tuned run, `--generator-url` at an endpoint such as `tailor serve`). Repeats alternate the arms and change the
training seed. Results: bench/results/synth.{json,md}.

    python bench/synth.py                                   # full: 3 repeats (each repeat takes minutes)
    python bench/synth.py --repeats 1 --max-steps 2 --eval-rows 4 --seeds 4 --out /tmp/synth-smoke   # smoke test
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


def demo_project(root: Path, eval_rows: int, base_model: str | None = None, pii: bool = True
                 ) -> tuple[Path, list[dict], dict]:
    """Demo config + its prepared split: (folder, human train rows, config dict with the golden eval file)."""
    from llmtailor.pipeline import prepare_stage

    demo = resources.files("llmtailor") / "assets" / "demo"
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "tickets.jsonl").write_text((demo / "tickets.jsonl").read_text(encoding="utf-8"))
    (root / "ticket.schema.json").write_text((demo / "ticket.schema.json").read_text(encoding="utf-8"))
    cfg = yaml.safe_load((demo / "tailor.yaml").read_text(encoding="utf-8"))
    cfg["eval"].update(variants=["tuned"], max_examples=eval_rows, gates=[],
                       regression={"enabled": False}, redteam={"enabled": False})
    cfg["registry"] = {"enabled": False}
    cfg["data"]["pii"]["enabled"] = pii
    if base_model:  # a tiny byte-level test model needs ~4x the demo's token budget for the same tickets
        cfg["model"]["base_model"] = str(Path(base_model).resolve())
        cfg["data"]["max_seq_len"] = 1536
    (root / "tailor.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    version = prepare_stage(root / "tailor.yaml", show_progress=False)
    train = [json.loads(x) for x in (version.path / "train.jsonl").read_text().splitlines()]
    evals = (version.path / "eval.jsonl").read_text()
    (root / "data" / "golden.jsonl").write_text(evals)
    cfg["data"]["test_sources"] = ["data/golden.jsonl"]
    cfg["data"]["pii"]["enabled"] = False  # already redacted by the first prepare
    return root, train, cfg


def arm(root: Path, cfg: dict, name: str, sources: list, seed: int, max_steps: int) -> dict:
    """Train and evaluate one arm in its own runs folder; its metrics and seconds."""
    from llmtailor.pipeline import eval_stage, train_stage

    c = json.loads(json.dumps(cfg))
    c["data"]["sources"] = sources
    c["data"]["output_dir"] = f"datasets-{name}"
    c["runs_dir"] = f"runs-{name}"
    c["train"].update(seed=seed, max_steps=max_steps)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(c, sort_keys=False))
    t0 = time.perf_counter()
    trained = train_stage(path, show_progress=False)
    train_s = time.perf_counter() - t0
    result = eval_stage(path, run=str(trained.run_dir), show_progress=False)
    tuned = result.variants["tuned"]
    card = json.loads(next((root / f"datasets-{name}").glob("*/card.json")).read_text())
    return {"arm": name, "seed": seed, "train_rows": card["train_rows"], "train_s": round(train_s, 1),
            "json_compliance": tuned.get("json_compliance"), "field_accuracy_mean": tuned.get("field_accuracy_mean"),
            "eval_rows": tuned.get("n")}


def summarise(values: list[float | None]) -> dict:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--human", type=int, default=50, help="Human rows in the small arms.")
    ap.add_argument("--seeds", type=int, default=50, help="Seed rows evolved (out of the --human rows).")
    ap.add_argument("--n-per-seed", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--eval-rows", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generator-run", help="Run folder whose adapter evolves and answers (default: the base).")
    ap.add_argument("--generator-url", help="OpenAI-compatible endpoint that evolves and answers.")
    ap.add_argument("--out", default=str(HERE / "results" / "synth"), help="Path stem of the .json and .md results.")
    ap.add_argument("--base-model", help="Model folder instead of the packaged SmolLM2 (smoke tests: a tiny model).")
    ap.add_argument("--no-pii", action="store_true", help="Skip PII redaction (smoke tests; the demo has PII).")
    args = ap.parse_args()

    from llmtailor.config import load_config
    from llmtailor.data.synth import run_synth
    from llmtailor.io import write_jsonl

    root = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    root, train, cfg = demo_project(root, args.eval_rows, args.base_model, not args.no_pii)
    write_jsonl(root / "data" / "human_small.jsonl", train[: args.human])
    write_jsonl(root / "data" / "human_all.jsonl", train)
    generator: dict = {"model": None}
    if args.generator_url:
        generator = {"base_url": args.generator_url}
    elif args.generator_run:
        generator = {"run": str(Path(args.generator_run).resolve())}
    synth_cfg = json.loads(json.dumps(cfg))
    synth_cfg["data"]["sources"] = ["data/human_small.jsonl"]
    synth_cfg["synth"] = {"generator": generator, "output": "data/synthetic.jsonl", "n_per_seed": args.n_per_seed,
                          "max_seeds": args.seeds, "max_new_tokens": 160, "answer_max_new_tokens": 96}
    (root / "synth.yaml").write_text(yaml.safe_dump(synth_cfg, sort_keys=False))
    t0 = time.perf_counter()
    synth = run_synth(load_config(root / "synth.yaml"), show_progress=True)
    synth_s = time.perf_counter() - t0

    arms = {
        "human_small": ["data/human_small.jsonl"],
        "human_small+evolved": ["data/human_small.jsonl", {"path": "data/synthetic.jsonl", "origin": "synthetic"}],
        "human_all": ["data/human_all.jsonl"],
    }
    rows = []
    for r in range(args.repeats):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))  # alternate the order between repeats
        for name in order:
            rows.append(arm(root, cfg, name, arms[name], seed=42 + r, max_steps=args.max_steps))
            print(json.dumps(rows[-1]))
    load = os.getloadavg()[0]
    summary = {name: {m: summarise([x[m] for x in rows if x["arm"] == name])
                      for m in ("json_compliance", "field_accuracy_mean", "train_s")} for name in arms}
    out = {"args": vars(args), "synth": synth.as_dict(), "synth_seconds": round(synth_s, 1), "runs": rows,
           "summary": summary, "load_avg_1min": load, "loaded_machine": load > 1.5}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    label = f" (measured on a loaded machine, 1-min load {load:.1f})" if load > 1.5 else f" (1-min load {load:.1f})"
    md = [f"# Synthetic data (Evol-Instruct) on the demo{label}", "",
          f"`python bench/synth.py {_cli(args)}`",
          "", f"Generator: {synth.as_dict()['totals']}; {args.repeats} repeat(s), {args.max_steps} steps per arm, "
          f"{args.eval_rows} held-out tickets, same rows for every arm.", "",
          "| arm | train rows | json_compliance median (min-max) | field_accuracy_mean median (min-max) |",
          "|---|---:|---|---|"]
    for name in arms:
        s = summary[name]
        n = next(x["train_rows"] for x in rows if x["arm"] == name)
        md.append(f"| {name} | {n} | {_fmt(s['json_compliance'])} | {_fmt(s['field_accuracy_mean'])} |")
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _cli(args: argparse.Namespace) -> str:
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items() if v)


def _fmt(s: dict) -> str:
    return "-" if s["median"] is None else f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


if __name__ == "__main__":
    main()
