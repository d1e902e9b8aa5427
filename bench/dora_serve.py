"""DoRA serving: merged copy of the base (the engine's default) against PEFT's unmerged DoRA, same engine code.

A random DoRA adapter (r16, all linear layers, non-zero B) on the packaged SmolLM2; greedy, every request forced
to produce exactly --tokens tokens. Reports tokens/s for one request and for 4 concurrent requests (one batch),
the merged/unmerged ratio, the first request (merge or PEFT load included), and whether both paths produce
the same tokens.

    python bench/dora_serve.py --tokens 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = [
    "My invoice shows a double charge for March.",
    "I cannot log in to the portal after resetting my password.",
    "The storage bucket in eu-west-1 is not reachable.",
    "Please cancel my subscription at the end of the month.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from llmtailor.chat import prompt_ids
    from llmtailor.config import ModelConfig
    from llmtailor.models import load_model

    model, tok = load_model(ModelConfig())
    ids = [prompt_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    folder = Path(tempfile.mkdtemp(prefix="bench-dora-")) / "dora"
    torch.manual_seed(7)
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", use_dora=True,
                                          init_lora_weights=False))
    pm.save_pretrained(folder)
    model = pm.unload()

    # The merged engine copies the base and leaves it untouched, so the unmerged one can wrap it afterwards.
    merged = run(model, tok, folder, ids, args, merge=True)
    unmerged = run(model, tok, folder, ids, args, merge=False)
    res = {
        "model": "smollm2-135m-instruct (fp32, CPU)" if not torch.cuda.is_available() else "smollm2-135m (GPU)",
        "tokens_per_request": args.tokens,
        "torch_threads": torch.get_num_threads(),
        "first_request_s_merged": merged["load_s"],
        "first_request_s_unmerged": unmerged["load_s"],
        "single_tokens_per_s": {"merged": merged["single"], "unmerged": unmerged["single"],
                                "ratio": round(merged["single"] / unmerged["single"], 2)},
        "batch4_tokens_per_s": {"merged": merged["batch"], "unmerged": unmerged["batch"],
                                "ratio": round(merged["batch"] / unmerged["batch"], 2)},
        "same_tokens": merged["texts"] == unmerged["texts"],
    }
    print(json.dumps(res, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "dora_serve.json").write_text(json.dumps(res, indent=2) + "\n")
    s, b = res["single_tokens_per_s"], res["batch4_tokens_per_s"]
    (out / "dora_serve.md").write_text(
        "# DoRA serving: merged copy vs PEFT's unmerged DoRA\n\n"
        f"Command: `python bench/dora_serve.py --tokens {args.tokens} --repeats {args.repeats}`; "
        f"{res['model']}, {res['torch_threads']} torch threads, load average {os.getloadavg()[0]:.1f} after.\n\n"
        "| | merged | unmerged | merged / unmerged |\n|---|---|---|---|\n"
        f"| one request, tokens/s | {s['merged']} | {s['unmerged']} | {s['ratio']}x |\n"
        f"| 4 concurrent requests, tokens/s | {b['merged']} | {b['unmerged']} | {b['ratio']}x |\n"
        f"| first request incl. merge / load, s | {res['first_request_s_merged']} | "
        f"{res['first_request_s_unmerged']} | |\n\n"
        f"Same greedy tokens on both paths: {res['same_tokens']}.\n")


def run(model, tok, folder: Path, ids: list[list[int]], args, *, merge: bool) -> dict:
    """Tokens/s of one request and of len(ids) concurrent requests for the DoRA adapter on one engine."""
    from llmtailor.serve.engine import Engine, GenRequest

    n = args.tokens
    engine = Engine(model, tok, max_batch_size=16, batch_wait_ms=10, merge_dora=merge).start()
    engine.add_adapter("dora", folder)
    engine.eos_ids = [-1]  # no token id is -1: every request produces exactly n tokens

    def served(batch: list[list[int]]) -> tuple[float, list[str]]:
        texts = [""] * len(batch)

        def go(i: int) -> None:
            texts[i] = engine.complete(GenRequest(batch[i], n, adapter="dora"))[0]

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(batch))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0, texts

    t0 = time.perf_counter()
    served([ids[0]])  # first use: merge (or PEFT load) + warm-up
    load_s = round(time.perf_counter() - t0, 2)
    single, batch = [], []
    texts: list[str] = []
    for _ in range(args.repeats):
        single.append(n / served([ids[0]])[0])
        took, texts = served(ids)
        batch.append(len(ids) * n / took)
    engine.stop()
    med = statistics.median
    return {"load_s": load_s, "single": round(med(single), 2), "batch": round(med(batch), 2), "texts": texts}


if __name__ == "__main__":
    main()
