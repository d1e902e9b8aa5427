"""Compare the base and the tuned model on the held-out split: generate, score, save.

One model is loaded: the adapter is switched off for the base model's answers, so both variants
see identical weights apart from the adapter, identical prompts, and identical greedy decoding.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import TailorError
from llmtailor.io import write_json, write_jsonl
from llmtailor.runs import read_run, update_run
from llmtailor.train.dataset import load_rows

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig


@dataclass
class EvalResult:
    """Where the results went and the headline numbers per variant."""

    run_dir: Path
    results_path: Path
    variants: dict[str, dict[str, Any]]
    n_examples: int


def _split(row: dict) -> tuple[list[dict], str]:
    """Prompt conversation (everything before the final answer) and the reference answer."""
    msgs = row["messages"]
    return msgs[:-1], msgs[-1]["content"]


def _user_text(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _load_tuned(cfg: TailorConfig, run_dir: Path) -> tuple[Any, Any, bool]:
    """The tuned model, and whether its adapter can be switched off to get the base model."""
    from llmtailor.models import load_model

    adapter = run_dir / "adapter"
    if adapter.exists():
        model, tok = load_model(cfg.model, adapter=adapter)
        return model, tok, True
    full = run_dir / "model"
    if full.exists():
        model, tok = load_model(cfg.model, adapter=full)
        return model, tok, False
    raise TailorError(f"{run_dir}: no adapter/ or model/ folder; did training finish?")


def evaluate(cfg: TailorConfig, run_dir: Path, *, show_progress: bool = True) -> EvalResult:
    """Generate held-out answers with base and tuned models, compute metrics, write eval/ in the run folder."""
    from llmtailor.eval.loss import eval_loss
    from llmtailor.eval.metrics import load_schema, score_examples
    from llmtailor.generate import generate
    from llmtailor.models import load_model

    info = read_run(run_dir)
    dataset_dir = Path(info.get("dataset_dir", ""))
    eval_file = dataset_dir / "eval.jsonl"
    if not eval_file.exists():
        raise TailorError(f"{eval_file}: held-out split not found for run {run_dir.name}")
    rows = load_rows(eval_file)
    if cfg.eval.max_examples:
        rows = rows[: cfg.eval.max_examples]
    if not rows:
        raise TailorError(f"{eval_file}: empty eval set; raise data.split.eval_fraction or add rows")
    schema = load_schema(cfg.eval.json_schema) if cfg.eval.json_schema else None
    metrics = list(cfg.eval.metrics)
    if schema is None:
        metrics = [m for m in metrics if m not in ("json_compliance", "field_accuracy")]
    max_len = cfg.train.max_seq_len or cfg.data.max_seq_len

    import torch

    torch.manual_seed(cfg.eval.seed)
    prompts, refs = zip(*(_split(r) for r in rows), strict=True)
    prompts, refs = list(prompts), list(refs)
    model, tok, has_adapter = _load_tuned(cfg, run_dir)

    def run_variant(name: str, m: Any, switch_off: bool) -> tuple[list[str], dict]:
        ctx = m.disable_adapter() if switch_off else contextlib.nullcontext()
        with ctx:
            started = time.perf_counter()
            outs = generate(
                m,
                tok,
                prompts,
                max_new_tokens=cfg.eval.max_new_tokens,
                batch_size=cfg.eval.batch_size,
                show_progress=show_progress,
                description=f"{name:>5} answers",
            )
            gen_s = time.perf_counter() - started
            loss = eval_loss(m, tok, rows, max_len, cfg.eval.batch_size) if "loss" in metrics else {}
        agg, per = score_examples(outs, refs, schema, [x for x in metrics if x != "loss"])
        agg.update(loss)
        agg["generation_s"] = round(gen_s, 2)
        agg["examples_per_s"] = round(len(outs) / gen_s, 3) if gen_s > 0 else None
        return outs, {"aggregate": agg, "per_example": per}

    outputs: dict[str, list[str]] = {}
    scored: dict[str, dict] = {}
    if has_adapter:
        outputs["base"], scored["base"] = run_variant("base", model, True)
    else:
        base, _ = load_model(cfg.model)
        outputs["base"], scored["base"] = run_variant("base", base, False)
        del base
    outputs["tuned"], scored["tuned"] = run_variant("tuned", model, False)

    out_dir = run_dir / "eval"
    variants = {name: s["aggregate"] for name, s in scored.items()}
    results = {
        "variants": variants,
        "n_examples": len(rows),
        "schema": str(cfg.eval.json_schema) if cfg.eval.json_schema else None,
        "metrics": metrics,
        "generation": {
            "greedy": True,
            "max_new_tokens": cfg.eval.max_new_tokens,
            "batch_size": cfg.eval.batch_size,
            "seed": cfg.eval.seed,
        },
        "dataset_hash": info.get("dataset_hash"),
    }
    examples = []
    for i, (row, prompt, ref) in enumerate(zip(rows, prompts, refs, strict=True)):
        examples.append(
            {
                "id": row.get("id", i),
                "prompt": _user_text(prompt),
                "reference": ref,
                "outputs": {name: outputs[name][i] for name in outputs},
                "scores": {name: scored[name]["per_example"][i] for name in scored},
            }
        )
    write_jsonl(out_dir / "examples.jsonl", examples)
    results_path = write_json(out_dir / "results.json", results)
    update_run(
        run_dir,
        evaluated=time.strftime("%Y-%m-%dT%H:%M:%S"),
        eval_summary={
            name: {k: v for k, v in agg.items() if isinstance(v, int | float)} for name, agg in variants.items()
        },
    )
    return EvalResult(run_dir, results_path, variants, len(rows))
