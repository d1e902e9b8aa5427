"""Retrieval-augmented fine-tuning: does a LoRA trained on `tailor data raft` rows use the passage it retrieves?

Documents (policy-like, every one shipped in this repository; nothing under ../shared is read):
* the chat-rag template's handbook (llmtailor/assets/templates/chat-rag/docs/*.md, 5 documents), and
* the 31 hand-written policy and fact passages of tests/data/faithfulness_pairs.json, one document each.

Steps: ingest all 36 into one index (packaged MiniLM embedder, hybrid search), `run_raft` with rules (no
generator), documents split into train and held-out (the chat-rag `returns.md` pinned to held-out, so the issue's
question is asked about a document never trained on), LoRA on the packaged SmolLM2-135M-Instruct with the training
rows, then every held-out question through `RagAssistant.ask` (what `tailor rag ask` calls) for base+RAG and
tuned+RAG. Every distinct held-out question is asked twice: as is, and (unanswerable) with
`where: source != <the oracle's document>`, so retrieval runs as usual but cannot return the answer.

Scoring (per question, then mean with 95% bootstrap intervals, llmtailor.eval.stats.bootstrap_ci):
* correct: the gold fact span (e.g. "14 days") appears in the answer, or token F1 with the gold sentence >= 0.6;
* cited: a citation of the answer is the oracle passage (same chunk id);
* correct_cited: both (the target: tuned >= 3x base);
* declined (unanswerable rows): the answer is the decline sentence or says it does not know; false declines are
  counted on the answerable rows.

Usage: python bench/raft.py [--epochs 1] [--unanswerable-share 0.2] [--out bench/results]
                            [--loaded "note on machine load"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HANDBOOK = ROOT / "llmtailor" / "assets" / "templates" / "chat-rag" / "docs"
PASSAGES = ROOT / "tests" / "data" / "faithfulness_pairs.json"
ISSUE_QUESTION = "How many days do I have to return opened hardware?"
F1_THRESHOLD = 0.6
DECLINE = re.compile(
    r"\b(?:don't|do not|cannot|can't) (?:know|find|answer)|not (?:in|found in) the (?:context|passages)", re.I)


def write_documents(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted(HANDBOOK.glob("*.md")):
        (folder / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
        n += 1
    for key, text in json.loads(PASSAGES.read_text(encoding="utf-8"))["passages"].items():
        (folder / f"kb-{key}.md").write_text(f"# {key.replace('_', ' ').capitalize()}\n\n{text}\n", encoding="utf-8")
        n += 1
    return n


def write_project(work: Path, args: argparse.Namespace) -> Path:
    cfg = {
        "project": "raft-bench",
        "runs_dir": "runs",
        "data": {
            "sources": [{"path": "data/raft.jsonl", "origin": "synthetic"}],
            "max_seq_len": 768,
            # Rows of one question differ only in distractors and order: near-duplicates by design.
            "dedup": {"enabled": False},
            "pii": {"enabled": False},
            "split": {"eval_fraction": 0.05, "seed": args.seed},
        },
        "train": {"method": "lora", "epochs": args.epochs, "batch_size": 8, "learning_rate": args.lr,
                  "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "save_steps": 10_000, "seed": args.seed},
        "rag": {"index_dir": "rag-index",
                "answer": {"max_context_chunks": args.k, "max_new_tokens": args.max_new_tokens}},
        "raft": {"heldout_fraction": args.heldout_fraction, "heldout_documents": ["returns.md"],
                 "rows_per_question": args.rows_per_question, "questions_per_chunk": 4, "seed": args.seed,
                 "unanswerable_share": args.unanswerable_share},
    }
    path = work / "tailor.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def token_f1(pred: str, gold: str) -> float:
    from llmtailor.eval.metrics import token_f1 as f1

    return float(f1(pred, gold))


def score(answer: object, meta: dict, no_answer: str) -> dict:
    from llmtailor.data.raft import contains_fact

    text = re.sub(r"\s*\[\d{1,3}\]", "", answer.answer)  # citation markers are not part of the answer's words
    declined = (not answer.known) or answer.answer.strip() == no_answer or bool(DECLINE.search(answer.answer))
    correct = (not declined) and (contains_fact(text, meta["fact"]) or token_f1(text, meta["answer"]) >= F1_THRESHOLD)
    cited = any(c.chunk_id == meta["oracle"] for c in answer.citations)
    retrieved = any(p.chunk_id == meta["oracle"] for p in answer.passages)
    return {"correct": correct, "cited": cited, "correct_cited": correct and cited, "declined": declined,
            "retrieved": retrieved}


def summarise(rows: list[dict]) -> dict:
    from llmtailor.eval.stats import bootstrap_ci

    out: dict = {}
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    for name, group, key in (("correct", ans, "correct"), ("cited", ans, "cited"),
                             ("correct_cited", ans, "correct_cited"), ("false_decline", ans, "declined"),
                             ("declined_unanswerable", una, "declined"), ("oracle_retrieved", ans, "retrieved")):
        vals = [float(r[key]) for r in group]
        ci = bootstrap_ci(vals)
        out[name] = {"mean": sum(vals) / len(vals) if vals else None, "ci": ci, "n": len(vals)}
    return out


def evaluate(assistant: object, heldout: list[dict], no_answer: str, label: str) -> list[dict]:
    out = []
    t0 = time.perf_counter()
    for i, row in enumerate(heldout, 1):
        meta = row["raft"]
        where = None if meta["answerable"] else f"source != '{meta['source']}'"
        ans = assistant.ask(meta["question"], where=where)
        s = score(ans, meta, no_answer) if meta["answerable"] else {"declined": score(ans, meta, no_answer)["declined"]}
        out.append({"question": meta["question"], "answerable": meta["answerable"], "fact": meta["fact"],
                    "source": Path(meta["source"]).name, "answer": ans.answer, **s})
        if i % 10 == 0:
            print(f"  {label}: {i}/{len(heldout)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one).")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--k", type=int, default=3, help="Passages per prompt (rag.answer.max_context_chunks).")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--heldout-fraction", type=float, default=0.35)
    ap.add_argument("--rows-per-question", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unanswerable-share", type=float, default=0.2,
                    help="Share of training rows that drop the oracle and decline (raft.unanswerable_share).")
    ap.add_argument("--loaded", default="", help="Note on machine load, written into the results.")
    args = ap.parse_args()

    import torch

    from llmtailor.config import load_config
    from llmtailor.data.raft import run_raft
    from llmtailor.io import read_jsonl, write_json, write_text
    from llmtailor.models import load_model
    from llmtailor.pipeline import train_stage
    from llmtailor.rag.answer import RagAssistant
    from llmtailor.rag.ingest import ingest
    from llmtailor.rag.search import Retriever

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = args.work or Path(tempfile.mkdtemp(prefix="raft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    n_docs = write_documents(work / "docs")
    cfg_path = write_project(work, args)
    cfg = load_config(cfg_path)
    t = time.perf_counter()
    ingest([work / "docs"], work / "rag-index", cfg.rag, rebuild=True, base_dir=work)
    times["ingest_s"] = time.perf_counter() - t
    t = time.perf_counter()
    raft = run_raft(cfg)
    times["raft_rows_s"] = time.perf_counter() - t
    print("raft:", raft.as_dict(), flush=True)
    heldout = [row for _, row in read_jsonl(raft.heldout_output)]
    # Every distinct held-out question is asked twice: as is (answerable) and with its document filtered out
    # (unanswerable); the rows' own answerable flags only matter for training.
    seen: set[str] = set()
    unique = [r for r in heldout if not (r["raft"]["question"] in seen or seen.add(r["raft"]["question"]))]
    heldout = [{"raft": {**r["raft"], "answerable": a}} for a in (True, False) for r in unique]

    t = time.perf_counter()
    trained = train_stage(cfg, show_progress=False)
    times["train_s"] = time.perf_counter() - t
    print(f"trained {trained.steps} steps in {times['train_s']:.0f} s, loss {trained.final_loss}", flush=True)

    results: dict[str, list[dict]] = {}
    for label, adapter in (("base+RAG", None), ("tuned+RAG", trained.adapter_dir)):
        model, tok = load_model(cfg.model, adapter=adapter)
        retriever = Retriever.open(work / "rag-index", cfg.rag, base_dir=work)
        bot = RagAssistant(retriever, cfg.rag.answer, model=model, tokenizer=tok)
        t = time.perf_counter()
        try:
            results[label] = evaluate(bot, heldout, cfg.rag.answer.no_answer, label)
            issue = bot.ask(ISSUE_QUESTION)
            results[label + ":issue"] = [{"question": ISSUE_QUESTION, "answer": issue.answer,
                                          "citations": [c.label() for c in issue.citations]}]
        finally:
            bot.close()
        times[f"eval_{label}_s"] = time.perf_counter() - t

    summary = {label: summarise(rows) for label, rows in results.items() if ":" not in label}
    base_cc = summary["base+RAG"]["correct_cited"]["mean"] or 0.0
    tuned_cc = summary["tuned+RAG"]["correct_cited"]["mean"] or 0.0
    report = {
        "documents": n_docs, "raft": raft.as_dict(), "heldout_questions": len(heldout),
        "train": {"steps": trained.steps, "final_loss": trained.final_loss, "tokens_per_s": trained.tokens_per_s,
                  "epochs": args.epochs, "lr": args.lr, "unanswerable_share": args.unanswerable_share},
        "k": args.k, "max_new_tokens": args.max_new_tokens, "f1_threshold": F1_THRESHOLD, "summary": summary,
        "ratio_correct_cited": (tuned_cc / base_cc) if base_cc else None,
        "target_met": tuned_cc >= 3 * base_cc and tuned_cc > 0,
        "issue_question": {k: results[k + ":issue"][0] for k in ("base+RAG", "tuned+RAG")},
        "per_question": {k: v for k, v in results.items() if ":" not in k},
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "loaded": args.loaded},
        "command": "python bench/raft.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "raft.json", report)
    write_text(args.out / "raft.md", markdown(report))
    print(markdown(report))


def _fmt(m: dict) -> str:
    if m["mean"] is None:
        return "n/a"
    lo, hi = m["ci"]
    return f"{m['mean']:.2f} ({lo:.2f}-{hi:.2f})"


def markdown(r: dict) -> str:
    s = r["summary"]
    rows = [("answer correct", "correct"), ("cites the oracle passage", "cited"),
            ("**correct with correct citation**", "correct_cited"),
            ("declines an answerable question", "false_decline"),
            ("declines an unanswerable question", "declined_unanswerable"),
            ("oracle passage retrieved (same for both)", "oracle_retrieved")]
    n_ans = s["base+RAG"]["correct"]["n"]
    n_una = s["base+RAG"]["declined_unanswerable"]["n"]
    lines = [
        "# Retrieval-augmented fine-tuning (RAFT): base+RAG vs tuned+RAG",
        "",
        f"Produced by `{r['command']}`. {r['documents']} policy-like documents shipped in this repository (the "
        "chat-rag template handbook and the passages of tests/data/faithfulness_pairs.json); rows by "
        "`tailor data raft` rules "
        f"(no generator); {r['raft']['documents']['train']} documents train, {r['raft']['documents']['heldout']} held "
        "out (`returns.md` pinned held-out). Every question below comes from a held-out document; both variants answer "
        f"through `RagAssistant.ask` (what `tailor rag ask` runs), {r['k']} passages, greedy, "
        f"{r['max_new_tokens']} new tokens. Each question is also asked unanswerable: with "
        "`where: source != <oracle document>`.",
        "",
        "Correct = the gold fact span appears in the answer, or token F1 with the gold sentence >= "
        f"{r['f1_threshold']}. Cited = a citation is the oracle passage. 95% bootstrap intervals.",
        "",
        f"| metric (held-out: {n_ans} answerable, {n_una} unanswerable) | base+RAG | tuned+RAG |",
        "|---|---|---|",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {_fmt(s['base+RAG'][key])} | {_fmt(s['tuned+RAG'][key])} |")
    ratio = r["ratio_correct_cited"]
    lines += ["", f"Correct-with-citation ratio tuned / base: "
              f"{'n/a (base 0)' if ratio is None else f'{ratio:.1f}x'}; target >= 3x: "
              f"**{'met' if r['target_met'] else 'not met'}**.", ""]
    t = r["train"]
    lines += [f"Training: {r['raft']['rows']['train_answerable'] + r['raft']['rows']['train_unanswerable']} rows "
              f"({r['raft']['rows']['train_unanswerable']} to decline), LoRA r16, {t['epochs']} epochs, lr {t['lr']}, "
              f"{t['steps']} steps, final loss {t['final_loss']:.3f}.", ""]
    lines += ["The issue's question (`returns.md` is held out):", ""]
    for k, v in r["issue_question"].items():
        lines.append(f"- {k}: {v['answer']!r} (cites: {', '.join(v['citations']) or 'nothing'})")
    load = "; " + r["machine"]["loaded"] if r["machine"]["loaded"] else ""
    took = ", ".join(f"{k} {v}" for k, v in r["times_s"].items())
    lines += ["", f"Times (s, {r['machine']['cpus']} CPUs{load}; durations, not results): {took}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
