"""Synthetic data on the demo: 50 human rows vs 50 human + Evol-Instruct rows vs all human rows.

Every arm trains the packaged SmolLM2 with the demo's LoRA settings (same max_steps) and is scored on the same
held-out tickets (the demo's eval split, given to every arm as `data.test_sources`), through llmtailor's own
pipeline: `prepare_stage`, `train_stage`, `eval_stage` (variant `tuned` only), `run_synth`. The evolved rows are
made from the 50 human rows by `synth.generator` (default: the packaged base model itself; `--generator-run` points
at a tuned run, `--generator-url` at an endpoint such as `tailor serve`) with `--template` (auto | wizardlm | direct),
and answered by `--answerer-run` (a run tuned on the same 50 human rows only, so no arm sees more human data than it
should; default: the generator answers). `--compare-template wizardlm` also runs the other template on the same seeds
with the same answerer and records its kept/dropped counts (its rows are not trained on). Repeats alternate the arms
and change the training seed. Results: bench/results/synth.{json,md}.

    python bench/synth.py                                   # full: 3 repeats (each repeat takes minutes)
    python bench/synth.py --repeats 1 --max-steps 2 --eval-rows 4 --seeds 4 --out /tmp/synth-smoke   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
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
    ap.add_argument("--generator-run", help="Run folder whose adapter evolves (default: the base).")
    ap.add_argument("--generator-url", help="OpenAI-compatible endpoint that evolves.")
    ap.add_argument("--generator-key-env", help="Environment variable holding the endpoint's API key.")
    ap.add_argument("--generator-model", default="default", help="Model name sent to the endpoint.")
    ap.add_argument("--template", default="auto", choices=["auto", "wizardlm", "direct"], help="synth.template.")
    ap.add_argument("--fewshot", type=int, default=2, help="synth.fewshot: example rows in the direct template.")
    ap.add_argument("--noun", default="message", help="synth.noun: what a seed is, in the direct template.")
    ap.add_argument("--answerer-run", help="Run folder whose adapter answers the evolved rows (default: generator).")
    ap.add_argument("--compare-template", choices=["wizardlm", "direct"],
                    help="Also evolve the same seeds with this template (counts only, not trained on).")
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
        generator = {"base_url": args.generator_url, "endpoint_model": args.generator_model,
                     "api_key_env": args.generator_key_env}
    elif args.generator_run:
        generator = {"run": str(Path(args.generator_run).resolve())}
    answerer = {"run": str(Path(args.answerer_run).resolve())} if args.answerer_run else None
    answerer_run = None
    if args.answerer_run:  # what the answerer was trained on, to check it saw only the small arm's human rows
        info = json.loads((Path(args.answerer_run) / "run.json").read_text())
        answerer_run = {k: info.get(k) for k in ("run_id", "dataset_hash", "train_rows", "steps", "eval_summary")}

    def synthesize(template: str, output: str) -> dict:
        """run_synth with one template on the 50 seeds; its counts, seconds and models."""
        c = json.loads(json.dumps(cfg))
        c["data"]["sources"] = ["data/human_small.jsonl"]
        c["synth"] = {"generator": generator, "answerer": answerer, "template": template, "fewshot": args.fewshot,
                      "noun": args.noun, "output": output, "n_per_seed": args.n_per_seed, "max_seeds": args.seeds,
                      "max_new_tokens": 160, "answer_max_new_tokens": 96}
        path = root / f"synth-{template}.yaml"
        path.write_text(yaml.safe_dump(c, sort_keys=False))
        loaded = load_config(path)
        t0 = time.perf_counter()
        res = run_synth(loaded, show_progress=True)
        return {**res.as_dict(), "seconds": round(time.perf_counter() - t0, 1),
                "generator": loaded.synth.generator.describe(),
                "answerer": (loaded.synth.answerer or loaded.synth.generator).describe()}

    synth = synthesize(args.template, "data/synthetic.jsonl")
    print(json.dumps({k: synth[k] for k in ("template", "kept", "dropped", "errors", "seconds")}))
    compared = None
    if args.compare_template:
        compared = synthesize(args.compare_template, f"data/synthetic-{args.compare_template}.jsonl")
        print(json.dumps({k: compared[k] for k in ("template", "kept", "dropped", "errors", "seconds")}))

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
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], HERE.parent), *sys.argv[1:]])
    out = {"command": command, "args": vars(args), "synth": synth, "synth_seconds": synth["seconds"],
           "compared_template": compared, "answerer_run": answerer_run, "runs": rows, "summary": summary,
           "load_avg_1min": load,
           "loaded_machine": load > 1.5, "repeats_note": f"{args.repeats} training seed(s) per arm"
           + (" (one seed: no spread, differences within a few points are noise)" if args.repeats == 1 else "")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    label = f" (measured on a loaded machine, 1-min load {load:.1f})" if load > 1.5 else f" (1-min load {load:.1f})"
    md = [f"# Synthetic data (Evol-Instruct) on the demo{label}", "", f"`{command}`", "",
          f"Generator: `{json.dumps(synth['generator'])}`; answerer: `{json.dumps(synth['answerer'])}`. "
          f"{out['repeats_note']}, {args.max_steps} steps per arm, {args.eval_rows} held-out tickets, same rows for "
          "every arm.", "",
          "| template | attempts | kept | dropped by reason | generator errors | seconds |",
          "|---|---:|---:|---|---|---:|"]
    for res in (synth, compared):
        if res is not None:
            drops = ", ".join(f"{k} {v}" for k, v in sorted(res["dropped"].items(), key=lambda kv: -kv[1])) or "-"
            md.append(f"| {res['template']}{' (trained on)' if res is synth else ' (counts only)'} | "
                      f"{res['attempts']} | {res['kept']} | {drops} | {res['errors'] or '-'} | {res['seconds']} |")
    md += ["", "| arm | train rows | json_compliance median (min-max) | field_accuracy_mean median (min-max) |",
           "|---|---:|---|---|"]
    for name in arms:
        s = summary[name]
        n = next((x["train_rows"] for x in rows if x["arm"] == name), "-")
        md.append(f"| {name} | {n} | {_fmt(s['json_compliance'])} | {_fmt(s['field_accuracy_mean'])} |")
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _fmt(s: dict) -> str:
    return "-" if s["median"] is None else f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


if __name__ == "__main__":
    main()
