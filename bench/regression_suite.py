"""Forgetting measured on the whole regression suite, not the demo's 16-item sample: what self-rehearsal buys.

The demo gates on 16 items (one item = 6.25 points), which is too few to tell a real drop from noise. This script
answers all 220 items with base and tuned for a finished run (`evaluate`), saves the per-item answers, and renders a
table of the drop on round-robin subsets of 16, 48, 100 and all 220 items for several saved runs (`render`).

    python bench/regression_suite.py evaluate -c demo/tailor.yaml --run RUN_ID --out bench/results/regression_X.jsonl
    python bench/regression_suite.py render LABEL=FILE.jsonl [LABEL=FILE.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (16, 48, 100, 220)


def evaluate(config: Path, run: str, out: Path) -> None:
    from llmtailor.config import load_config
    from llmtailor.eval.evaluate import Models, _regression

    cfg = load_config(config)
    cfg.eval.regression.max_items = None
    run_dir = Path(cfg.runs_dir) / run
    models = Models(cfg, run_dir)
    tmp = Path(tempfile.mkdtemp(prefix="regression-suite-"))
    try:
        summary = _regression(cfg, models, True, tmp)
        models.close()
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp / "regression.jsonl", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: summary[k] for k in ("n_items", "base", "tuned", "drop")}))


def render(pairs: list[str]) -> None:
    from llmtailor.eval.regression import load_suite

    print("| run | " + " | ".join(f"drop, {n} items" for n in SIZES) + " | knowledge base -> tuned (60) |")
    print("|---|" + "---|" * (len(SIZES) + 1))
    for pair in pairs:
        label, file = pair.split("=", 1)
        res = {json.loads(line)["id"]: json.loads(line) for line in Path(file).read_text().splitlines() if line}
        cells = []
        for n in SIZES:
            items = load_suite(max_items=n)
            base = sum(res[i["id"]]["passed"]["base"] for i in items)
            tuned = sum(res[i["id"]]["passed"]["tuned"] for i in items)
            cells.append(f"{(base - tuned) / len(items):+.3f}")
        know = [r for r in res.values() if r["category"] == "knowledge"]
        kb, kt = (sum(r["passed"][m] for r in know) for m in ("base", "tuned"))
        print(f"| {label} | " + " | ".join(cells) + f" | {kb} -> {kt} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("evaluate")
    ev.add_argument("-c", "--config", type=Path, required=True)
    ev.add_argument("--run", required=True)
    ev.add_argument("--out", type=Path, required=True)
    rd = sub.add_parser("render")
    rd.add_argument("pairs", nargs="+", help="LABEL=regression.jsonl")
    args = ap.parse_args()
    if args.cmd == "evaluate":
        evaluate(args.config, args.run, args.out)
    else:
        render(args.pairs)


if __name__ == "__main__":
    main()
