"""Greedy generation as evaluation, rehearsal, RAG answers and `tailor chat` run it (llmtailor.generate): the lean
decoding step against `model.generate`, in the same process, on the same prompts, alternating within each repeat.

The packaged SmolLM2-135M (bf16 where the CPU computes it natively, as `tailor eval` loads it), the demo's first 40
tickets as chat prompts with its system prompt, 64 new tokens, batches of 8 (the demo's eval settings), the plain
base and the same base with a LoRA adapter of the demo's shape (rank 16, all linear layers; random non-zero weights).
Also counts the answers both paths give identically. Results: bench/results/generate.{json,md}.

    python bench/generate.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from llmtailor.config import ModelConfig
    from llmtailor.generate import generate_detailed
    from llmtailor.models import load_model

    rows = []
    for line in (ROOT / "llmtailor/assets/demo/tickets.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the demo data holds malformed rows on purpose (for `tailor data`)
            continue
    convs = [[m for m in r["messages"] if m.get("role") in ("system", "user")] for r in rows
             if isinstance(r.get("messages"), list)][: args.prompts]
    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model, tok = load_model(ModelConfig(precision="fp32"))
    torch.manual_seed(7)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.002)
    peft.save_pretrained(tmp / "adapter")
    base, tok = load_model(ModelConfig())
    tuned = PeftModel.from_pretrained(load_model(ModelConfig())[0], tmp / "adapter").eval()
    models = {"base": base, "LoRA adapter": tuned}
    precision = str(next(base.parameters()).dtype)

    def run(model, lean: bool) -> tuple[float, list[str]]:
        t0 = time.perf_counter()
        out = generate_detailed(model, tok, convs, max_new_tokens=args.tokens, batch_size=8, lean=lean)
        return time.perf_counter() - t0, [g.text for g in out]

    for model in models.values():  # warm-up: first calls pay one-time costs (fusing, allocator)
        run(model, True)
        run(model, False)
    times: dict[str, dict[str, list[float]]] = {k: {"lean": [], "generate": []} for k in models}
    same: dict[str, int] = {}
    loads = [os.getloadavg()[0]]
    for i in range(args.repeats):
        for key, model in models.items():
            order = (True, False) if i % 2 == 0 else (False, True)
            texts = {}
            for lean in order:
                dt, texts[lean] = run(model, lean)
                times[key]["lean" if lean else "generate"].append(dt)
            same[key] = sum(a == b for a, b in zip(texts[True], texts[False], strict=True))
            loads.append(os.getloadavg()[0])
        print(f"repeat {i + 1} done", flush=True)
    # For scale: how far `model.generate` itself moves with the batch (each prompt alone against batches of 8).
    alone = {k: [g.text for g in generate_detailed(m, tok, convs, max_new_tokens=args.tokens, batch_size=1,
                                                   lean=False)] for k, m in models.items()}
    batched = {k: run(m, False)[1] for k, m in models.items()}
    self_agree = {k: sum(a == b for a, b in zip(alone[k], batched[k], strict=True)) for k in models}
    res = {"model": "SmolLM2-135M-Instruct (packaged)", "precision": precision, "prompts": len(convs),
           "new_tokens": args.tokens, "batch_size": 8, "threads": torch.get_num_threads(),
           "load_avg_1min": {"max": max(loads), "before": loads[0]},
           "seconds": {k: {m: spread(v) for m, v in t.items()} for k, t in times.items()},
           "speedup": {k: round(statistics.median(t["generate"]) / statistics.median(t["lean"]), 3)
                       for k, t in times.items()},
           "identical_answers_lean_vs_generate": same, "identical_answers_generate_alone_vs_batched": self_agree}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate.json").write_text(json.dumps(res, indent=2) + "\n")
    loaded = max(loads) > 1.5
    lines = ["# Greedy generation: the lean decoding step against `model.generate` (bench/generate.py)", "",
             f"SmolLM2-135M-Instruct in {precision}, {len(convs)} demo tickets, {args.tokens} new tokens, batches of "
             f"8, {res['threads']} threads; median (min-max) seconds for all prompts, {args.repeats} repeats "
             f"alternating the two paths. 1-minute load average {loads[0]:.2f} before, up to {max(loads):.2f}"
             + (" (**measured on a loaded machine**)." if loaded else "."), "",
             "| model | `model.generate` s | lean step s | speed-up | identical answers, lean vs generate | "
             "for scale: identical answers, generate alone vs in batches of 8 |", "|---|---|---|---|---|---|"]
    for k, t in res["seconds"].items():
        g, c = t["generate"], t["lean"]
        lines.append(f"| {k} | {g['median']} ({g['min']}-{g['max']}) | {c['median']} ({c['min']}-{c['max']}) | "
                     f"**{res['speedup'][k]}x** | {same[k]} of {len(convs)} | {self_agree[k]} of {len(convs)} |")
    note = ("Answers that differ part where two nearly equal logits trade places: the lean step adds a LoRA product "
            "computed in another order (adapters stacked, scaling folded into B) than PEFT's, so float32 sums differ "
            "in the last bits before the bf16 rounding; the base path is the same computation and gives the same "
            "answers.")
    lines += ["", note, "", f"Reproduce: `python bench/generate.py --repeats {args.repeats}`", ""]
    (args.out / "generate.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
