"""DPO on a weak SFT model's own failures: JSON compliance and field accuracy before and after, on the demo.

Per repeat (seed): a weak SFT adapter (the demo trained for a fraction of an epoch), evaluated on the demo's held-out
tickets; preference pairs built from that adapter's own sampled answers on training prompts (`tailor data
preferences`: schema validity, then fields, then token F1; the reference answer is chosen where the model falls
short); then two continuations of the same adapter on the same prompts, evaluated on the same held-out tickets:
- dpo: DPO on the pairs (the weak adapter trained further; a frozen copy is the reference);
- sft_more (control, same prompts, same number of steps): SFT continued on the chosen answers only.
So the table separates what the preference signal adds from what more supervised steps add.

    python bench/dpo.py [--repeats 3] [--weak-steps 12] [--prompts 48] [--eval-rows 40]
    python bench/dpo.py --tiny   # minutes: proves the pipeline, figures meaningless
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
SHOWN = ("json_compliance", "field_accuracy_mean", "token_f1")


def _cfg_with(cfg, **sections):
    """A copy of the config with some fields of some sections replaced (keeps the file path for relative paths)."""
    update = {name: getattr(cfg, name).model_copy(update=fields) for name, fields in sections.items()}
    new = cfg.model_copy(update=update)
    new._path = cfg.path
    return new


def _scores(result) -> dict[str, float]:
    tuned = result.variants["tuned"]
    return {k: tuned.get(k) for k in SHOWN}


def one_repeat(cfg, version, seed: int, args, say) -> dict:
    from llmtailor.data.preference_pairs import build_preferences
    from llmtailor.eval.evaluate import evaluate
    from llmtailor.models import load_model
    from llmtailor.train.dataset import load_rows
    from llmtailor.train.dpo import train as train_dpo
    from llmtailor.train.sft import train as train_sft

    out: dict = {"seed": seed}
    weak_cfg = _cfg_with(cfg, train={"max_steps": args.weak_steps, "seed": seed, "save_steps": 10_000})
    t0 = time.perf_counter()
    weak = train_sft(weak_cfg, version.path, version.hash, show_progress=False)
    out["weak_train_s"] = round(time.perf_counter() - t0, 1)
    out["weak"] = _scores(evaluate(weak_cfg, weak.run_dir, show_progress=False))
    say(f"seed {seed}: weak SFT {out['weak']}")

    pref_file = Path(weak.run_dir) / "preferences.jsonl"
    pcfg = _cfg_with(cfg, preference={"samples": args.samples, "max_prompts": args.prompts, "seed": seed,
                                      "max_new_tokens": cfg.eval.max_new_tokens, "out": pref_file})
    model, tok = load_model(cfg.model, adapter=weak.adapter_dir)
    t0 = time.perf_counter()
    rows = load_rows(version.path / "train.jsonl")
    import random

    random.Random(seed).shuffle(rows)
    stats = build_preferences(pcfg, rows, model, tok)
    out["pairs"] = stats.as_dict() | {"seconds": round(time.perf_counter() - t0, 1)}
    del model
    say(f"seed {seed}: {stats.pairs} pairs ({stats.gold_chosen} with the reference chosen)")
    if not stats.pairs:
        return out

    steps = max(1, stats.pairs // args.batch)
    common = {"max_steps": steps, "seed": seed, "save_steps": 10_000, "batch_size": args.batch,
              "init_adapter": str(weak.run_dir), "warmup_ratio": 0.0}
    dpo_cfg = _cfg_with(pcfg, train={**common, "objective": "dpo", "learning_rate": args.dpo_lr},
                        preference={"data": pref_file, "beta": args.beta})
    t0 = time.perf_counter()
    dpo = train_dpo(dpo_cfg, version.path, version.hash, show_progress=False)
    out["dpo_train_s"] = round(time.perf_counter() - t0, 1)
    from llmtailor.runs import read_run

    out["dpo_reward_metrics"] = read_run(dpo.run_dir).get("preference_metrics")
    out["dpo"] = _scores(evaluate(dpo_cfg, dpo.run_dir, show_progress=False))
    say(f"seed {seed}: after DPO {out['dpo']}")

    # Control: the same prompts with their chosen answers as SFT rows, the same number of steps.
    from llmtailor.io import write_jsonl

    chosen_ds = Path(weak.run_dir) / "chosen_ds"
    pairs = [json.loads(line) for line in pref_file.read_text().splitlines()]
    write_jsonl(chosen_ds / "train.jsonl", [{"messages": [*p["prompt"], {"role": "assistant", "content": p["chosen"]}]}
                                            for p in pairs])
    shutil.copy(version.path / "eval.jsonl", chosen_ds / "eval.jsonl")
    sft_cfg = _cfg_with(cfg, train={**common, "objective": "sft", "group_by_length": False})
    t0 = time.perf_counter()
    more = train_sft(sft_cfg, chosen_ds, version.hash + "-chosen", show_progress=False)
    out["sft_more_train_s"] = round(time.perf_counter() - t0, 1)
    out["sft_more"] = _scores(evaluate(sft_cfg, more.run_dir, show_progress=False))
    say(f"seed {seed}: SFT continued on chosen {out['sft_more']}")
    return out


def summarise(repeats: list[dict]) -> dict:
    table = {}
    for variant in ("weak", "dpo", "sft_more"):
        for metric in SHOWN:
            vals = [r[variant][metric] for r in repeats if variant in r and r[variant].get(metric) is not None]
            if vals:
                table[f"{variant}.{metric}"] = {"median": statistics.median(vals), "min": min(vals),
                                                "max": max(vals), "n": len(vals)}
    return table


def write_md(path: Path, data: dict) -> None:
    t = data["summary"]
    loaded = "measured on a loaded machine; " if data["load_avg_1m"][0] > 1.5 or data["load_avg_1m"][1] > 1.5 else ""
    lines = [
        "# DPO on the weak SFT model's own failures (demo tickets)",
        "",
        f"`{data['command']}`: {data['repeats']} repeat(s) (seeds {data['seeds']}), {loaded}1-minute load average "
        f"{data['load_avg_1m'][0]:.1f} before, {data['load_avg_1m'][1]:.1f} after; {data['machine']}.",
        f"Weak SFT: {data['args']['weak_steps']} steps of batch 8 on the demo; pairs from up to "
        f"{data['args']['prompts']} training prompts x {data['args']['samples']} sampled answers; DPO "
        f"(beta {data['args']['beta']}, lr {data['args']['dpo_lr']}) and the SFT control run the same number of "
        f"steps from the weak adapter. Held-out: the demo's eval split, first {data['args']['eval_rows']} tickets, "
        "greedy. Median (min-max) over repeats.",
        "",
        *(["**Tiny settings (`--tiny`): this run proves the pipeline works end to end; its figures (4 held-out "
           "tickets, 1 DPO step) mean nothing about DPO.**", ""] if data["args"].get("tiny") else []),
        "| variant | JSON schema compliance | field accuracy (mean of 4) | token F1 |",
        "|---|---|---|---|",
    ]
    names = {"weak": "weak SFT (before)", "dpo": "weak SFT + DPO on its failures",
             "sft_more": "weak SFT + SFT on the chosen answers (control)"}
    for v, label in names.items():
        cells = []
        for m in SHOWN:
            s = t.get(f"{v}.{m}")
            cells.append("-" if s is None else f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per repeat (pairs made, seconds):", ""]
    for r in data["per_repeat"]:
        p = r.get("pairs", {})
        lines.append(f"- seed {r['seed']}: {p.get('pairs')} pairs from {p.get('prompts')} prompts "
                     f"({p.get('gold_chosen')} with the reference chosen, {p.get('no_distinct_pair')} without a "
                     f"distinct pair); sampling {p.get('seconds')} s, weak SFT {r.get('weak_train_s')} s, DPO "
                     f"{r.get('dpo_train_s')} s, control {r.get('sft_more_train_s')} s; DPO reward margin first -> "
                     f"last step: {_margin(r)}")
    path.write_text("\n".join(lines) + "\n")


def _margin(r: dict) -> str:
    m = r.get("dpo_reward_metrics") or {}
    a, b = (m.get("first") or {}).get("rewards/margins"), (m.get("last") or {}).get("rewards/margins")
    return "-" if a is None or b is None else f"{a:.3f} -> {b:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmtailor-dpo-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weak-steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-lr", type=float, default=2e-4)
    parser.add_argument("--eval-rows", type=int, default=40)
    parser.add_argument("--tiny", action="store_true", help="tiny settings: proves the pipeline, figures meaningless")
    parser.add_argument("--out", default="dpo", help="results file stem under bench/results")
    args = parser.parse_args()
    if args.tiny:
        args.repeats, args.weak_steps, args.prompts, args.samples, args.eval_rows = 1, 2, 4, 2, 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from rich.console import Console

    from llmtailor.config import load_config
    from llmtailor.pipeline import prepare_stage

    console = Console(stderr=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "llmtailor.cli.main", "init", "demo"], cwd=args.workdir, check=True,
                   capture_output=True)
    cfg = load_config(args.workdir / "demo" / "tailor.yaml")
    cfg = _cfg_with(cfg, eval={"variants": ["tuned"], "max_examples": args.eval_rows,
                               "regression": cfg.eval.regression.model_copy(update={"enabled": False}),
                               "redteam": cfg.eval.redteam.model_copy(update={"enabled": False}),
                               "gates": [], "metrics": ["token_f1", "json_compliance", "field_accuracy"]},
                    registry={"enabled": False})
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    version = prepare_stage(cfg, show_progress=False)
    repeats = [one_repeat(cfg, version, seed, args, console.print) for seed in range(args.repeats)]
    data = {
        "command": "python bench/dpo.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_avg_1m": [load_before, os.getloadavg()[0]],
        "wall_s": round(time.perf_counter() - started, 1),
        "repeats": args.repeats, "seeds": list(range(args.repeats)),
        "args": vars(args) | {"workdir": str(args.workdir)},
        "per_repeat": repeats, "summary": summarise(repeats),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_md(RESULTS / f"{args.out}.md", data)
    console.print(f"wrote bench/results/{args.out}.md ({data['wall_s']} s)")


if __name__ == "__main__":
    main()
