"""Banking77 intent classification: base zero-shot, base few-shot and LoRA-tuned SmolLM2, through llmtailor's own code.

Reads /work/shared/data/banking77 (train.csv, test.csv, categories.json; see its SOURCE.md), builds a stratified
train subset as chat JSONL (system prompt listing the 77 labels, user = the message, assistant = the label), writes a
tailor.yaml in a temporary project and runs `llmtailor.pipeline.prepare_stage` / `train_stage` on it. It then scores
a stratified test subset with the evaluation's own pieces: `llmtailor.eval.evaluate.Models` (one model, adapter
switched off for base), `llmtailor.eval.ladder.pick_fewshot` / `fewshot_prompt` (k shots from the prepared train
split), `llmtailor.generate.generate` (batched greedy) and `llmtailor.eval.labels.label_metrics` (label mapping,
accuracy, macro-F1). It also times generation batched (8) vs one at a time on the same prompts.

Labels are written with spaces instead of underscores ("card arrival") in the system prompt and the answers: the
label list costs about 340 tokens instead of 480 per prompt, and llmtailor's label matching treats "_" and " " alike,
so scoring is unchanged. Results go to bench/results/banking77.{json,md}.

    python bench/banking77.py                      # 4 train + 4 test examples per intent (308 + 308 rows)
    python bench/banking77.py --test-per-class 1 --threads 1 --max-steps 12
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DATA = Path("/work/shared/data/banking77")
# SOURCE.md: "about 93% on the full training set for its best intent classifiers (dual sentence encoders,
# fine-tuned BERT); figure quoted from memory of the paper, not re-verified here".
PUBLISHED = {"accuracy": 0.93, "what": "best intent classifiers of Casanueva et al. 2020 (dual sentence encoders, "
             "fine-tuned BERT) trained on all 10,003 train rows, evaluated on all 3,080 test rows; figure quoted "
             "in SOURCE.md from memory of the paper, not re-verified"}


def read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def stratified(rows: list[tuple[str, str]], per_class: int, seed: int) -> list[tuple[str, str]]:
    """per_class rows of every label (all of a label's rows when it has fewer; 0 = all rows), seeded, shuffled."""
    if per_class <= 0:
        out = list(rows)
        random.Random(seed).shuffle(out)
        return out
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in rows:
        by_label[r[1]].append(r)
    rng = random.Random(seed)
    picked: list[tuple[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        picked.extend(rng.sample(group, min(per_class, len(group))))
    rng.shuffle(picked)
    return picked


def shown(label: str) -> str:
    return label.replace("_", " ")


def system_prompt(labels: list[str]) -> str:
    return ("Classify the customer's banking message. Reply with exactly one label from this list and nothing "
            "else: " + ", ".join(shown(lab) for lab in labels) + ".")


TUNED_SYSTEM = "Classify the customer's banking message into its intent label."


def chat_row(system: str, text: str, label: str) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text},
                         {"role": "assistant", "content": shown(label)}]}


def write_project(work: Path, train_file: Path, test_file: Path, args: argparse.Namespace) -> Path:
    cfg = {
        "project": "banking77-bench",
        "runs_dir": "runs",
        "data": {
            "sources": [str(train_file)],
            # The test rows are a golden test set: never trained on, leakage against train reported by prepare.
            "test_sources": [str(test_file)],
            "max_seq_len": 640,
            # Exact duplicates only in effect: many distinct banking questions share most of their words.
            "dedup": {"enabled": True, "threshold": 0.98},
            "pii": {"enabled": False},
        },
        "train": {
            "method": "lora",
            **({"max_steps": args.max_steps} if args.max_steps else {"epochs": args.epochs}),
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "lora_dropout": 0.0,
            "save_steps": 10_000,
            "seed": args.seed,
            **({"threads": args.threads} if args.threads else {}),
        },
        "eval": {"task": "label", "max_new_tokens": args.max_new_tokens, "batch_size": 16,
                 "fewshot_k": args.fewshot_k, "seed": args.seed},
    }
    path = work / "tailor.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def score(name: str, outs: list[str], refs: list[str], labels: list[str], seconds: float, cfg: object) -> dict:
    from llmtailor.eval.labels import label_metrics
    from llmtailor.eval.stats import bootstrap_ci

    agg, rows = label_metrics(outs, refs, labels)
    ci = bootstrap_ci([r["label_correct"] for r in rows], resamples=1000, seed=cfg.eval.seed)
    return {
        "variant": name,
        "n": len(outs),
        "accuracy": round(agg["accuracy"], 4),
        "accuracy_ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
        "macro_f1": round(agg["macro_f1"], 4),
        "unscorable": agg["unscorable"],
        "generation_s": round(seconds, 1),
        "examples_per_s": round(len(outs) / seconds, 3) if seconds > 0 else None,
        "samples": [{"text": None, "gold": r["label_gold"], "pred": r["label_pred"], "output": o}
                    for r, o in list(zip(rows, outs, strict=True))[:5]],
    }


def timed_generate(model: object, tok: object, convs: list[list[dict]], max_new_tokens: int,
                   batch_size: int, desc: str) -> tuple[list[str], float]:
    from llmtailor.generate import generate

    t0 = time.perf_counter()
    outs = generate(model, tok, convs, max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=True,
                    description=desc)
    return outs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=0, help="train examples per intent (0 = all 10,003 rows)")
    ap.add_argument("--test-per-class", type=int, default=0, help="test examples per intent for the tuned "
                    "variant (0 = all 3,080 rows)")
    ap.add_argument("--base-test-per-class", type=int, default=4, help="test examples per intent for the base "
                    "variants, whose prompts carry the 77-label list (~10x the tokens; 0 = all)")
    ap.add_argument("--max-steps", type=int, default=0, help="LoRA optimizer steps (0: --epochs)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--fewshot-k", type=int, default=3, help="shots for base few-shot (llmtailor's default is 3)")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--throughput-prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training and generation "
                    "(default: llmtailor's default, all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    import torch

    from llmtailor.data.leakage import dataset_leakage_results
    from llmtailor.eval.evaluate import Models
    from llmtailor.eval.ladder import fewshot_prompt, pick_fewshot
    from llmtailor.pipeline import prepare_stage, train_stage
    from llmtailor.train.dataset import load_rows

    started = time.perf_counter()
    load_before = os.getloadavg()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]])
    labels = json.loads((args.data / "categories.json").read_text(encoding="utf-8"))
    system = system_prompt(labels)
    train_all, test_all = read_csv(args.data / "train.csv"), read_csv(args.data / "test.csv")
    train_sub = stratified(train_all, args.per_class, args.seed)
    test_sub = stratified(test_all, args.test_per_class, args.seed + 1)
    base_test = stratified(test_all, args.base_test_per_class, args.seed + 1)

    work = Path(tempfile.mkdtemp(prefix="bench-banking77-"))
    train_file, test_file = work / "banking77_train.jsonl", work / "banking77_test.jsonl"
    # Fine-tuning's point: the tuned model learns the labels, so its prompt drops the 77-label list.
    train_file.write_text("".join(json.dumps(chat_row(TUNED_SYSTEM, t, c)) + "\n" for t, c in train_sub),
                          encoding="utf-8")
    test_file.write_text("".join(json.dumps(chat_row(TUNED_SYSTEM, t, c)) + "\n" for t, c in test_sub),
                         encoding="utf-8")
    cfg_path = write_project(work, train_file, test_file, args)
    print(f"project {work}: {len(train_sub)} train rows, {len(test_sub)} test rows", flush=True)

    from llmtailor.config import load_config

    cfg = load_config(cfg_path)
    t0 = time.perf_counter()
    version = prepare_stage(cfg, show_progress=False)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train_stage(cfg, show_progress=True)  # reuses the prepared version (same input, same config)
    train_wall_s = time.perf_counter() - t0
    run_info = json.loads((trained.run_dir / "run.json").read_text(encoding="utf-8"))
    prepared_train = load_rows(version.path / "train.jsonl")
    prepared_eval = load_rows(version.path / "eval.jsonl")
    print(f"trained {trained.steps} steps in {trained.runtime_s:.0f} s ({trained.tokens_per_s:.1f} tokens/s), "
          f"loss {run_info.get('first_loss')} -> {trained.final_loss}", flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    models = Models(cfg, trained.run_dir)  # tuned = base + adapter; base = adapter switched off
    tok = models.tok
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": t}] for t, _ in base_test]
    base_refs = [c for _, c in base_test]
    tuned_prompts = [[{"role": "system", "content": TUNED_SYSTEM}, {"role": "user", "content": t}] for t, _ in test_sub]
    refs = [c for _, c in test_sub]
    # Few-shot examples come from the prepared train split, shown with the label-list prompt the base needs.
    shots = [{"messages": [{"role": "system", "content": system}, *s["messages"][1:]]}
             for s in pick_fewshot(prepared_train, cfg.eval.fewshot_k, cfg.eval.seed)]
    fewshot = [fewshot_prompt(p, shots) for p in prompts]
    from llmtailor.chat import prompt_ids

    def mean_len(convs: list[list[dict]]) -> float:
        return round(sum(len(prompt_ids(tok, c)) for c in convs) / len(convs), 1)

    variants = []
    for name, mode, convs, gold, rows in (
            ("base zero-shot", "base", prompts, base_refs, base_test),
            (f"base few-shot (k={len(shots)})", "base", fewshot, base_refs, base_test),
            ("tuned (LoRA, short prompt)", "tuned", tuned_prompts, refs, test_sub)):
        with models.use(mode) as m:
            outs, secs = timed_generate(m, tok, convs, args.max_new_tokens, cfg.eval.batch_size, name)
        v = score(name, outs, gold, labels, secs, cfg)
        v["prompt_tokens_mean"] = mean_len(convs)
        for s, (text, _) in zip(v["samples"], rows, strict=False):
            s["text"] = text
        variants.append(v)
        print(f"{name}: accuracy {v['accuracy']:.3f}, macro-F1 {v['macro_f1']:.3f}, {v['examples_per_s']} ex/s",
              flush=True)

    # Generation throughput: the same prompts batched (8) and one at a time, base model, same max_new_tokens.
    tp_prompts = prompts[: args.throughput_prompts]
    with models.use("base") as m:
        batched_outs, batched_s = timed_generate(m, tok, tp_prompts, args.max_new_tokens, 8, "batched (8)")
        single_outs, single_s = timed_generate(m, tok, tp_prompts, args.max_new_tokens, 1, "one at a time")
    throughput = {
        "prompts": len(tp_prompts), "model": "base (adapter off)", "max_new_tokens": args.max_new_tokens,
        "prompt_tokens_mean": mean_len(tp_prompts),
        "batched_8_s": round(batched_s, 1), "batched_8_examples_per_s": round(len(tp_prompts) / batched_s, 3),
        "one_at_a_time_s": round(single_s, 1), "one_at_a_time_examples_per_s": round(len(tp_prompts) / single_s, 3),
        "speedup": round(single_s / batched_s, 2),
        "same_outputs": sum(a == b for a, b in zip(batched_outs, single_outs, strict=True)),
    }
    load_after = os.getloadavg()
    result = {
        "benchmark": "banking77",
        "command": command,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in load_after]},
        "data": {"source": str(args.data), "labels": len(labels), "train_full": len(train_all),
                 "test_full": len(test_all), "train_per_class": args.per_class, "train_subset": len(train_sub),
                 "prepared_train_rows": len(prepared_train), "prepared_heldout_rows": len(prepared_eval),
                 "test_per_class": args.test_per_class, "test_subset": len(test_sub),
                 "base_test_per_class": args.base_test_per_class, "base_test_subset": len(base_test),
                 "leakage": dataset_leakage_results(version.path).get("gate_values", {}).get("leakage"),
                 "tuned_system_prompt_tokens": len(tok(TUNED_SYSTEM)["input_ids"]),
                 "dataset_hash": version.hash, "system_prompt_tokens": len(tok(system)["input_ids"])},
        "train": {"method": cfg.train.method, "steps": trained.steps, "batch_size": cfg.train.batch_size,
                  "examples_seen": trained.steps * cfg.train.batch_size * cfg.train.gradient_accumulation_steps,
                  "learning_rate": cfg.train.learning_rate, "lora_r": cfg.train.lora_r,
                  "runtime_s": round(trained.runtime_s, 1), "wall_s_with_model_load": round(train_wall_s, 1),
                  "tokens_per_s": round(trained.tokens_per_s, 1), "first_loss": run_info.get("first_loss"),
                  "final_loss": trained.final_loss, "tokens_per_epoch": run_info.get("tokens_per_epoch")},
        "prepare_s": round(prepare_s, 1),
        "fewshot_examples": [{"text": s["messages"][-2]["content"], "label": s["messages"][-1]["content"]}
                             for s in shots],
        "variants": variants,
        "throughput": throughput,
        "published_reference": PUBLISHED,
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "banking77.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "banking77.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(r: dict) -> str:
    m, d, t, tp = r["machine"], r["data"], r["train"], r["throughput"]
    lines = [
        "# Banking77: base zero-shot, base few-shot, LoRA-tuned SmolLM2-135M-Instruct (CPU)",
        "",
        f"Command: `{r['command']}` (total {r['total_s'] / 60:.1f} min)",
        "",
        f"Machine: {m['cpu_count']} CPU cores shared with other jobs, torch {m['torch']} with {m['torch_threads']} "
        f"thread(s), {m['platform']}. Load average (1/5/15 min) before {m['load_avg_before']}, "
        f"after {m['load_avg_after']}.",
        "",
        f"Data: {d['labels']} intents. Train: {d['train_subset']:,} of {d['train_full']:,} rows "
        f"({'all' if not d['train_per_class'] else str(d['train_per_class']) + ' per intent'}); after llmtailor's "
        f"prepare (exact/near dedup at 0.98, PII off) {d['prepared_train_rows']:,} train rows. The test rows are the "
        f"project's golden test set (`data.test_sources`): {d['prepared_heldout_rows']:,} rows, leakage against "
        f"train: {d.get('leakage')}. Tuned variant: {d['test_subset']:,} test rows, short system prompt "
        f"({d.get('tuned_system_prompt_tokens')} tokens, no label list). Base variants: the label-list prompt "
        f"({d['system_prompt_tokens']} tokens) on a stratified {d.get('base_test_subset')}-row subset "
        f"({d.get('base_test_per_class')} per intent; the list makes each prompt ~10x longer).",
        "",
        "| variant | accuracy (95% CI) | macro-F1 | unscorable | prompt tokens | generation s | examples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in r["variants"]:
        ci = v["accuracy_ci95"]
        ci_s = f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        lines.append(f"| {v['variant']} | {v['accuracy']:.3f}{ci_s} | {v['macro_f1']:.3f} | {v['unscorable']}/{v['n']} "
                     f"| {v['prompt_tokens_mean']:.0f} | {v['generation_s']:.0f} | {v['examples_per_s']:.3f} |")
    p = r["published_reference"]
    lines += [
        f"| published, full data (far reference) | ~{p['accuracy']:.2f} | | | | | |",
        "",
        f"Far reference: {p['what']}.",
        "",
        f"Training: {t['method']} r={t['lora_r']}, {t['steps']} steps x batch {t['batch_size']} = {t['examples_seen']} "
        f"examples seen (of {d['prepared_train_rows']}), lr {t['learning_rate']}; {t['runtime_s']:.0f} s "
        f"({t['wall_s_with_model_load']:.0f} s with model load), {t['tokens_per_s']:.1f} train tokens/s; loss "
        f"{t['first_loss']} -> {t['final_loss']}. Prepare: {r['prepare_s']:.0f} s.",
        "",
        f"Generation throughput, {tp['prompts']} test prompts ({tp['prompt_tokens_mean']:.0f} prompt tokens mean), "
        f"{tp['model']}, greedy, max_new_tokens={tp['max_new_tokens']}: batched (8) {tp['batched_8_s']:.0f} s = "
        f"{tp['batched_8_examples_per_s']:.3f} examples/s; one at a time {tp['one_at_a_time_s']:.0f} s = "
        f"{tp['one_at_a_time_examples_per_s']:.3f} examples/s; batched is {tp['speedup']:.2f}x "
        f"({tp['same_outputs']}/{tp['prompts']} identical outputs). One pair, no repeats: not a speed result.",
        "",
        "Few-shot examples (llmtailor.eval.ladder.pick_fewshot over the prepared train split): "
        + "; ".join(f"\"{s['text']}\" -> {s['label']}" for s in r["fewshot_examples"]) + ".",
        "",
        "Scoring: llmtailor.eval.labels.label_metrics (whole answer, else first line, else exactly one label named "
        "in it; anything else is unscorable and wrong). Accuracy CI: llmtailor.eval.stats.bootstrap_ci, 1000 "
        "resamples. Numbers come from this run only; bench/results/banking77.json has sample outputs.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
