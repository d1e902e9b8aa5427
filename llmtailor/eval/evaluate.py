"""The adaptation ladder on the held-out split: generate with every variant, score, compare, gate, save.

One model is loaded: the adapter is switched off for the base variants' answers, so every variant sees identical
weights apart from the adapter and identical greedy decoding; variants differ only in weights and prompt (see
ladder.py). Results are written after every variant (status "partial"), so a crash or Ctrl-C keeps what was done.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import TailorError
from llmtailor.eval.config import CONSTRAINED_SUFFIX, parse_variant
from llmtailor.io import write_json, write_jsonl
from llmtailor.runs import read_run, update_run
from llmtailor.train.dataset import load_rows

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig

ROW_METRICS = ("exact_match", "token_f1", "rouge_l", "json_compliance", "field_accuracy_mean", "accuracy",
               "faithfulness", "answer_relevance", "context_precision", "context_recall", "citation_correctness")
CORPUS_METRICS = ("bleu", "macro_f1")
HEADLINE = {"label": "accuracy", "json": "field_accuracy_mean", "text": "token_f1"}
# Cheapest adaptation first: advice prefers the cheapest variant that is not significantly worse than the best.
# Constrained decoding costs no training and no prompt tokens: each constrained variant ranks right after its free one.
COST_ORDER = [x for n in ("base", "base_fewshot", "base_rag", "base_fewshot_rag", "tuned", "tuned_fewshot",
                          "tuned_rag", "tuned_fewshot_rag") for x in (n, n + CONSTRAINED_SUFFIX)]


@dataclass
class EvalResult:
    """Where the results went and the headline numbers per variant."""

    run_dir: Path
    results_path: Path
    variants: dict[str, dict[str, Any]]
    n_examples: int
    skipped: dict[str, str] = field(default_factory=dict)
    gates: list[dict] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def gates_passed(self) -> bool:
        return all(g["passed"] for g in self.gates)


def _split(row: dict) -> tuple[list[dict], str | None]:
    """Prompt conversation (everything before the final answer) and the reference answer (None when absent)."""
    msgs = row["messages"]
    if msgs and msgs[-1]["role"] == "assistant":
        return msgs[:-1], msgs[-1]["content"]
    return msgs, None


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


class Models:
    """Base and tuned behind one interface; the base is the tuned model with its adapter off when possible."""

    def __init__(self, cfg: TailorConfig, run_dir: Path, *, tuned: Any = None, base: Any = None, tok: Any = None):
        self.cfg = cfg
        given = tuned is not None
        if tuned is None:
            tuned, tok, has_adapter = _load_tuned(cfg, run_dir)
        else:
            has_adapter = base is None and hasattr(tuned, "disable_adapter")
        self.tuned, self.tok, self.has_adapter, self._base = tuned, tok, has_adapter, base
        self._structured: Any = None
        self.run_dir = run_dir
        from llmtailor.serve.engines import EngineChoice, choose_engine

        # Models handed in by the caller are what must be evaluated: they answer themselves, through transformers.
        self.engine = (EngineChoice("transformers", "models given in process") if given
                       else choose_engine(cfg.model, cfg.eval.engine))
        self._llama: Any = None
        self._schema: dict | None = None

    def close(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def _llama_adapter(self, mode: str) -> tuple[bool, Path | None]:
        """Whether llama.cpp can answer for `mode`, and the GGUF LoRA it needs (None: the plain base)."""
        if self.engine.name != "llamacpp":
            return False, None
        if mode != "tuned":
            return True, None
        adapter = self.run_dir / "adapter"
        if not adapter.exists() or json.loads((adapter / "adapter_config.json").read_text()).get("use_dora"):
            return False, None  # full fine-tune or DoRA: llama.cpp cannot apply it, transformers answers
        from llmtailor.export.gguf import base_gguf, cached_adapter_gguf

        return True, cached_adapter_gguf(adapter, base_gguf(self.cfg.model))

    def _generate_llama(self, adapter: Path | None, convs: list[list[dict]], max_new_tokens: int,
                        show_progress: bool, description: str, constrained: bool) -> list[Any]:
        from llmtailor.cli.output import progress_bar
        from llmtailor.export.gguf import base_gguf
        from llmtailor.generate_llamacpp import LlamaCppGenerator

        if self._llama is None:
            self._llama = LlamaCppGenerator(base_gguf(self.cfg.model), self.tok)
        schema = self._schema if constrained else None
        with progress_bar(description, len(convs), enabled=show_progress) as advance:
            return self._llama.generate_detailed(convs, max_new_tokens=max_new_tokens, adapter=adapter,
                                                 schema=schema, progress=advance)

    @contextlib.contextmanager
    def use(self, mode: str):
        """Yield the model for 'base' or 'tuned'."""
        if mode == "tuned":
            yield self.tuned
        elif self.has_adapter:
            with self.tuned.disable_adapter():
                yield self.tuned
        else:
            if self._base is None:
                from llmtailor.models import load_model

                self._base, _ = load_model(self.cfg.model)
            yield self._base

    def generate(self, mode: str, convs: list[list[dict]], max_new_tokens: int, show_progress: bool,
                 description: str) -> list[str]:
        return [g.text for g in self.generate_detailed(mode, convs, max_new_tokens, show_progress, description)]

    def generate_detailed(self, mode: str, convs: list[list[dict]], max_new_tokens: int, show_progress: bool,
                          description: str, constraint: Callable[[], Any] | None = None) -> list[Any]:
        """Answers with whether each one was cut off by max_new_tokens (llmtailor.generate.Generation); decoded
        under a fresh grammar matcher per row when `constraint` (see `json_constraint`) is given."""
        from llmtailor.generate import generate_detailed

        ok, adapter = self._llama_adapter(mode)
        if ok:
            return self._generate_llama(adapter, convs, max_new_tokens, show_progress, description,
                                        constraint is not None)
        with self.use(mode) as m:
            return generate_detailed(m, self.tok, convs, max_new_tokens=max_new_tokens,
                                     batch_size=self.cfg.eval.batch_size, show_progress=show_progress,
                                     description=description, constraint=constraint)

    def json_constraint(self, schema: dict, max_new_tokens: int) -> Callable[[], Any]:
        """Matchers for `schema` through the server's `response_format` path (serve.structured, xgrammar): compiled
        once here, so an unenforceable schema or too small a token budget fails before any generation."""
        from llmtailor.serve.structured import ResponseFormat, ResponseFormatError, StructuredOutput

        if self._structured is None:  # indexes the vocabulary once; stop ids = what generate_detailed stops on
            self._structured = StructuredOutput.for_model(self.tuned, self.tok, [self.tok.eos_token_id])
        so = self._structured
        fmt = ResponseFormat("json_schema", schema, "eval")
        self._schema = schema
        try:
            so.constraint(fmt, max_new_tokens)
        except ResponseFormatError as e:
            msg = str(e).replace("max_tokens=", "eval.max_new_tokens=").replace("response_format", "eval.json_schema")
            raise TailorError(f"eval.constrained_decoding: {msg}") from None
        return lambda: so.constraint(fmt, max_new_tokens)


def _field_mean(row: dict) -> float | None:
    fa = row.get("field_accuracy")
    if isinstance(fa, dict) and fa:
        return sum(fa.values()) / len(fa)
    return None


def _row_values(per: list[dict], metric: str) -> list[float | None]:
    if metric == "json_compliance":
        return [float(r["json_valid"]) if "json_valid" in r else None for r in per]
    if metric == "field_accuracy_mean":
        return [_field_mean(r) for r in per]
    if metric == "accuracy":
        return [r.get("label_correct") for r in per]
    return [r.get(metric) for r in per]


def _corpus_stat(metric: str, outs: list[str], refs: list[str | None], per: list[dict]) -> Callable | None:
    import numpy as np

    if metric == "bleu":
        keep = [i for i, r in enumerate(refs) if isinstance(r, str) and r.strip()]
        if not keep:
            return None
        from llmtailor.eval.metrics import bleu_corpus

        return lambda idx: bleu_corpus([outs[keep[i]] for i in idx], [refs[keep[i]] for i in idx]), len(keep)
    if metric == "macro_f1":
        keep = [i for i, r in enumerate(per) if "label_pred" in r]
        if not keep:
            return None
        from llmtailor.eval.labels import macro_f1

        gold = np.asarray([per[i]["label_gold"] for i in keep], dtype=object)
        pred = np.asarray([per[i]["label_pred"] for i in keep], dtype=object)
        return lambda idx: macro_f1(list(gold[idx]), list(pred[idx])), len(keep)
    return None


def ladder_stats(scored: dict[str, dict], outputs: dict[str, list[str]], refs: list[str | None], cfg: Any,
                 reference: str) -> dict:
    """CIs per metric per variant, paired tests of each variant vs the reference, ranking per metric."""
    from llmtailor.eval.stats import bootstrap_ci, bootstrap_ci_stat, paired_bootstrap, paired_bootstrap_stat

    bs = cfg.eval.bootstrap
    seed = cfg.eval.seed
    kw = {"resamples": bs.resamples, "confidence": bs.confidence, "seed": seed}
    corpus_kw = {**kw, "resamples": min(bs.resamples, 300)}
    metrics: list[str] = []
    for name, s in scored.items():
        agg = s["aggregate"]
        ci: dict[str, list[float]] = {}
        for m in ROW_METRICS:
            vals = _row_values(s["per_example"], m)
            if any(v is not None for v in vals):
                interval = bootstrap_ci([v for v in vals if v is not None], **kw)
                if interval:
                    ci[m] = [round(interval[0], 4), round(interval[1], 4)]
                    metrics.append(m)
        for m in CORPUS_METRICS:
            got = _corpus_stat(m, outputs[name], refs, s["per_example"]) if agg.get(m) is not None else None
            if got:
                stat, n = got
                interval = bootstrap_ci_stat(n, stat, **corpus_kw)
                if interval:
                    ci[m] = [round(interval[0], 4), round(interval[1], 4)]
                    metrics.append(m)
        agg["ci"] = ci
    metrics = [m for m in (*ROW_METRICS, *CORPUS_METRICS) if m in metrics]
    comparisons: dict[str, dict] = {}
    for name, s in scored.items():
        if name == reference:
            continue
        comp: dict[str, Any] = {}
        for m in metrics:
            if m in ROW_METRICS:
                a = _row_values(scored[reference]["per_example"], m)
                b = _row_values(s["per_example"], m)
                res = paired_bootstrap(a, b, alpha=bs.alpha, **kw)
            else:
                sa = _corpus_stat(m, outputs[reference], refs, scored[reference]["per_example"])
                sb = _corpus_stat(m, outputs[name], refs, s["per_example"])
                res = None
                if sa and sb and sa[1] == sb[1]:
                    res = paired_bootstrap_stat(sa[1], sa[0], sb[0], alpha=bs.alpha, **corpus_kw)
            if res:
                res["diff"] = round(res["diff"], 4)
                res["ci"] = [round(x, 4) for x in res["ci"]]
                comp[m] = res
        comparisons[name] = comp
    ranking = {}
    for m in metrics:
        vals = [(n, s["aggregate"].get(m)) for n, s in scored.items() if isinstance(s["aggregate"].get(m), int | float)]
        ranking[m] = [n for n, _ in sorted(vals, key=lambda kv: -kv[1])]
    return {"reference": reference, "metrics": metrics, "confidence": bs.confidence, "alpha": bs.alpha,
            "resamples": bs.resamples, "seed": seed, "comparisons": comparisons, "ranking": ranking}


def vs_best(scored: dict[str, dict], headline: str, cfg: Any) -> dict:
    """Paired test of every variant against the best one on the headline metric (for advice)."""
    from llmtailor.eval.stats import paired_bootstrap

    vals = {n: s["aggregate"].get(headline) for n, s in scored.items()}
    vals = {n: v for n, v in vals.items() if isinstance(v, int | float)}
    if not vals:
        return {}
    best = max(vals, key=lambda n: (vals[n], -COST_ORDER.index(n) if n in COST_ORDER else 0))
    out: dict[str, Any] = {"metric": headline, "best": best, "tests": {}}
    bs = cfg.eval.bootstrap
    for n in vals:
        if n == best:
            continue
        res = paired_bootstrap(_row_values(scored[best]["per_example"], headline),
                               _row_values(scored[n]["per_example"], headline),
                               resamples=bs.resamples, confidence=bs.confidence, alpha=bs.alpha, seed=cfg.eval.seed)
        if res:
            out["tests"][n] = {"diff": round(res["diff"], 4), "p_value": res["p_value"],
                               "significant": res["significant"]}
    return out


def _answers(cfg: TailorConfig, models: Models, v: Any, show_progress: bool,
             constraint: Callable[[], Any] | None = None) -> tuple[list[str], list[bool], list[bool]]:
    """The variant's answers, which rows the model produced, and which of those hit max_new_tokens. RAG rows with
    nothing relevant get the configured no_answer without generating, as `tailor rag ask` does. Constrained
    variants decode under `constraint` (Models.json_constraint)."""
    from llmtailor.generate import Generation

    asked = [v.asks(i) for i in range(len(v.prompts))]
    todo = [p for p, a in zip(v.prompts, asked, strict=True) if a]
    got = iter(models.generate_detailed(v.model, todo, cfg.eval.max_new_tokens, show_progress,
                                        f"{v.name:>12} answers", constraint if v.constrained else None)
               if todo else [])
    no_answer = Generation(cfg.rag.answer.no_answer if v.rag else "", False)
    gens = [next(got) if a else no_answer for a in asked]
    return [g.text for g in gens], asked, [g.hit_limit for g in gens]


def _add_citations(cfg: TailorConfig, found: list, outs: list[str], asked: list[bool], scored: dict) -> None:
    """Per row: the [n] markers mapped to passages (`RagAssistant.finish`), invalid ones, abstentions; counts."""
    from llmtailor.rag.answer import to_answer

    n_invalid = n_cited = 0
    for r, f, text, a in zip(scored["per_example"], found, outs, asked, strict=True):
        ans = to_answer(f, text if a else None, cfg.rag.answer.no_answer)
        r["cited"] = [c.number for c in ans.citations]
        r["invalid_citations"] = ans.invalid_citations
        r["abstained"] = not a
        n_cited += bool(ans.citations)
        n_invalid += bool(ans.invalid_citations)
    agg = scored["aggregate"]
    agg["abstained"] = sum(not a for a in asked)
    agg["abstain_rate"] = agg["abstained"] / len(asked) if asked else 0.0
    agg["cite_rate"] = n_cited / len(asked) if asked else 0.0
    agg["invalid_citation_rows"] = n_invalid


def passage_rows(found: Any) -> list[dict]:
    """The numbered passages a RAG prompt showed, with their source, for examples.jsonl and the report."""
    return [{"number": c.number, "source": c.source, "title": c.title, "page": c.page, "section": c.heading_path,
             "score": round(c.score, 4), "similarity": None if c.similarity is None else round(c.similarity, 4),
             "text": h.chunk.text[:600]} for c, h in zip(found.passages, found.hits, strict=True)]


def score_variant(outs: list[str], refs: list[str | None], questions: list[str], schema: dict | None,
                  metrics: list[str], task: str, labels: list[str], contexts: list[list[str]] | None,
                  truncated: list[bool], abstained: list[bool] | None = None) -> dict:
    """Aggregate and per-row scores of one variant's answers (grounding too when passages were retrieved)."""
    from llmtailor.eval.grounding import grounding_scores
    from llmtailor.eval.labels import label_metrics
    from llmtailor.eval.metrics import score_examples

    agg, per = score_examples(outs, refs, schema, [x for x in metrics if x != "loss"])
    field_means = [v for v in (_field_mean(r) for r in per) if v is not None]
    if field_means:
        agg["field_accuracy_mean"] = sum(field_means) / len(field_means)
    if task == "label":
        lagg, lrows = label_metrics(outs, refs, labels)
        agg.update(lagg)
        for r, lr in zip(per, lrows, strict=True):
            r.update(lr)
    if contexts is not None:
        gagg, grows = grounding_scores(outs, questions, contexts, refs, abstained)
        agg.update(gagg)
        for r, g in zip(per, grows, strict=True):
            r.update(g)
    for r, t in zip(per, truncated, strict=True):
        r["truncated"] = t
    agg["truncated"] = sum(truncated)
    agg["truncated_rate"] = sum(truncated) / len(truncated) if truncated else 0.0
    return {"aggregate": agg, "per_example": per}


def _data_results(dataset_dir: Path) -> dict:
    """The dataset card's train/test leakage check, for results.json, the report and `data.*` gates."""
    from llmtailor.data.leakage import dataset_leakage_results

    return dataset_leakage_results(dataset_dir)


def evaluate(
    cfg: TailorConfig,
    run_dir: Path,
    *,
    show_progress: bool = True,
    say: Callable[[str], None] | None = None,
    models: Models | None = None,
    retrieve: Any = None,
    judge: Any = None,
) -> EvalResult:
    """Run the ladder (and regression, red-team, judge when enabled); write eval/ in the run folder."""
    from llmtailor.eval import ladder as ladder_mod
    from llmtailor.eval.gates import check_gates
    from llmtailor.eval.labels import detect_task
    from llmtailor.eval.loss import eval_loss
    from llmtailor.eval.metrics import load_schema

    say = say or (lambda msg: None)
    started_all = time.perf_counter()
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
    train_file = dataset_dir / "train.jsonl"
    train_rows = load_rows(train_file) if train_file.exists() else []
    schema = load_schema(cfg.eval.json_schema) if cfg.eval.json_schema else None
    metrics = list(cfg.eval.metrics)
    if schema is None:
        metrics = [m for m in metrics if m not in ("json_compliance", "field_accuracy")]
    max_len = cfg.train.max_seq_len or cfg.data.max_seq_len

    import torch

    torch.manual_seed(cfg.eval.seed)
    prompts, refs = zip(*(_split(r) for r in rows), strict=True)
    prompts, refs = list(prompts), list(refs)
    missing_refs = sum(1 for r in refs if not (isinstance(r, str) and r.strip()))
    if missing_refs:
        say(f"[yellow]{missing_refs} held-out row(s) have no reference answer[/]: reference metrics skip them")
    questions = [_user_text(p) for p in prompts]
    task = cfg.eval.task if cfg.eval.task != "auto" else detect_task(refs, schema is not None)
    labels: list[str] = []
    if task == "label":
        train_refs = [r["messages"][-1]["content"] for r in train_rows if r.get("messages")]
        labels = list(cfg.eval.labels or sorted({x.strip() for x in [*train_refs, *refs] if isinstance(x, str)
                                                 and x.strip()}))
    names = cfg.eval.variants or ladder_mod.default_variants(cfg)
    twins: list[str] = []
    if cfg.eval.constrained_decoding:
        if schema is None or task != "json":  # the config check catches this at load; configs built in code too
            raise TailorError("eval.constrained_decoding needs a JSON task with eval.json_schema set "
                              f"(task is {task}, schema {'set' if schema is not None else 'not set'})")
        twins = cfg.eval.constrained_variants if cfg.eval.constrained_variants is not None else [
            n for n in names if parse_variant(n)[0] == "tuned"]
    variants, skipped, shots = ladder_mod.build_variants(cfg, names, prompts, train_rows, questions, say, retrieve,
                                                         constrained=twins)
    if not variants:
        raise TailorError(f"no variant could be evaluated: {skipped}")
    models = models or Models(cfg, run_dir)
    infer = getattr(models.tuned, "llmtailor_precision", None)
    if infer is not None:
        say(f"precision {infer.name}: {infer.reason}")
    say(f"generation engine {models.engine.name}: {models.engine.reason}")
    constraint = None
    not_enforced: list[str] = []
    if any(v.constrained for v in variants):  # compile the grammar before generating anything
        from llmtailor.serve.structured import enforceable_schema

        constraint = models.json_constraint(schema, cfg.eval.max_new_tokens)
        not_enforced = enforceable_schema(schema)[1]
        if not_enforced:
            say(f"[yellow]constrained decoding cannot enforce {len(not_enforced)} if/then/else keyword(s) of "
                f"{cfg.eval.json_schema.name}[/] (cross-field rules): json_compliance still checks them")
    out_dir = run_dir / "eval"
    reference = "base" if any(v.name == "base" for v in variants) else variants[0].name

    outputs: dict[str, list[str]] = {}
    scored: dict[str, dict] = {}
    retrieved: list | None = None  # shared by every RAG variant: retrieval depends on the question only
    results: dict[str, Any] = {
        "status": "partial",
        "task": task,
        "variants": {},
        "skipped_variants": skipped,
        "n_examples": len(rows),
        "missing_references": missing_refs,
        "schema": str(cfg.eval.json_schema) if cfg.eval.json_schema else None,
        "metrics": metrics,
        "headline_metric": HEADLINE[task] if task != "json" or any(
            isinstance(r, str) and r.strip().startswith("{") for r in refs) else "json_compliance",
        "labels": labels if task == "label" else None,
        "fewshot": {"k": len(shots), "ids": [s.get("id") for s in shots]} if shots else None,
        "generation": {"greedy": True, "max_new_tokens": cfg.eval.max_new_tokens,
                       "batch_size": cfg.eval.batch_size, "seed": cfg.eval.seed, "engine": models.engine.name,
                       "engine_reason": models.engine.reason},
        # constrained twin -> its free variant (same weights and prompt, decoded under the schema's grammar)
        "constrained_decoding": {"enabled": cfg.eval.constrained_decoding, "engine": "xgrammar", "variants": {
            v.name: v.name.removesuffix(CONSTRAINED_SUFFIX) for v in variants if v.constrained},
            "not_enforced": not_enforced},
        "dataset_hash": info.get("dataset_hash"),
        "data": _data_results(dataset_dir),
        "timings_s": {},
    }

    def save_examples() -> None:
        examples = []
        for i, (row, ref) in enumerate(zip(rows, refs, strict=True)):
            ex = {"id": row.get("id", i), "prompt": questions[i], "reference": ref,
                  "outputs": {n: outputs[n][i] for n in outputs},
                  "scores": {n: scored[n]["per_example"][i] for n in scored}}
            if retrieved is not None:
                ex["passages"] = passage_rows(retrieved[i])
            examples.append(ex)
        write_jsonl(out_dir / "examples.jsonl", examples)

    for v in variants:
        t0 = time.perf_counter()
        outs, asked, trunc = _answers(cfg, models, v, show_progress, constraint)
        gen_s = time.perf_counter() - t0
        s = score_variant(outs, refs, questions, schema, metrics, task, labels, v.contexts, trunc,
                          None if v.retrieved is None else [not a for a in asked])
        if v.retrieved is not None:
            _add_citations(cfg, v.retrieved, outs, asked, s)
            retrieved = v.retrieved
        agg = s["aggregate"]
        if "loss" in metrics and not v.constrained:  # a constrained twin has its free variant's weights and prompt
            # Loss of the reference answer given this variant's own prompt (few-shot / RAG context included);
            # RAG rows answered "I don't know" without the model have no prompt to score.
            loss_rows = [{"messages": [*p, {"role": "assistant", "content": r}]}
                         for p, r, a in zip(v.prompts, refs, asked, strict=True) if a and isinstance(r, str)
                         and r.strip()]
            limit = max_len if not (v.fewshot or v.rag) else max_len * (cfg.eval.fewshot_k + 4)
            if loss_rows:
                with models.use(v.model) as m:
                    loss = eval_loss(m, models.tok, loss_rows, limit, cfg.eval.batch_size)
                if loss.get("eval_tokens"):  # no answer token left after truncation: no loss, never NaN
                    agg.update(loss)
        agg["generation_s"] = round(gen_s, 2)
        agg["examples_per_s"] = round(len(outs) / gen_s, 3) if gen_s > 0 else None
        if agg["truncated"]:
            say(f"[yellow]{v.name}: {agg['truncated']} answer(s) hit max_new_tokens={cfg.eval.max_new_tokens}[/] "
                "(likely cut off; raise eval.max_new_tokens)")
        outputs[v.name], scored[v.name] = outs, s
        results["variants"][v.name] = agg
        results["timings_s"][v.name] = round(time.perf_counter() - t0, 2)
        write_json(out_dir / "results.json", results)  # partial results survive a crash in a later variant
        save_examples()

    results["ladder"] = ladder_stats(scored, outputs, refs, cfg, reference)
    results["vs_best"] = vs_best(scored, results["headline_metric"], cfg)
    write_json(out_dir / "results.json", results)

    if cfg.eval.regression.enabled:
        results["regression"] = _regression(cfg, models, show_progress, out_dir)
    else:
        results["regression"] = {"status": "skipped", "reason": "eval.regression.enabled is false"}
    if cfg.eval.redteam.enabled:
        results["redteam"] = _redteam(cfg, models, show_progress, out_dir, prompts)
    else:
        results["redteam"] = {"status": "skipped", "reason": "eval.redteam.enabled is false"}
    write_json(out_dir / "results.json", results)
    if cfg.eval.judge.enabled:
        results["judge"] = _judge(cfg, judge, questions, refs, outputs, reference, out_dir, say)
    else:
        results["judge"] = {"status": "skipped", "reason": "eval.judge.enabled is false"}

    gates = check_gates(cfg.eval.gates, results)
    results["gates"] = {"passed": all(g["passed"] for g in gates), "results": gates}
    results["status"] = "complete"
    results["timings_s"]["total"] = round(time.perf_counter() - started_all, 2)
    results_path = write_json(out_dir / "results.json", results)
    update_run(
        run_dir,
        evaluated=time.strftime("%Y-%m-%dT%H:%M:%S"),
        eval_summary={
            name: {k: v for k, v in agg.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            for name, agg in results["variants"].items()
        },
        gates=results["gates"],
        **({"eval_precision": infer.name, "eval_precision_reason": infer.reason} if infer is not None else {}),
    )
    models.close()  # llama.cpp contexts (if any) are rebuilt on the next use
    return EvalResult(run_dir, results_path, results["variants"], len(rows), skipped, gates, results)


def _regression(cfg: TailorConfig, models: Models, show_progress: bool, out_dir: Path) -> dict:
    from llmtailor.eval.regression import general_text, load_suite, run_regression, text_perplexity

    rc = cfg.eval.regression
    items = load_suite(categories=rc.categories, max_items=rc.max_items)
    t0 = time.perf_counter()

    def gen(mode: str, convs: list[list[dict]]) -> list[str]:
        return models.generate(mode, convs, rc.max_new_tokens, show_progress, f"{'regression ' + mode:>18}")

    def ppl(mode: str) -> float | None:
        with models.use(mode) as m:
            return text_perplexity(m, models.tok, general_text())

    summary, rows = run_regression(items, gen, ppl if rc.perplexity else None)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_jsonl(out_dir / "regression.jsonl", rows)
    return summary


def _redteam(cfg: TailorConfig, models: Models, show_progress: bool, out_dir: Path, prompts: list) -> dict:
    from llmtailor.eval.redteam import load_probes, run_redteam

    rt = cfg.eval.redteam
    probes = load_probes(rt.builtin, rt.probes_file, rt.max_probes)
    if not probes:
        return {"status": "skipped", "reason": "no probes (builtin off and no probes_file)"}
    system = cfg.data.system_prompt or next((m["content"] for m in prompts[0] if m["role"] == "system"), None)
    t0 = time.perf_counter()

    def gen(mode: str, convs: list[list[dict]]) -> list[str]:
        return models.generate(mode, convs, rt.max_new_tokens, show_progress, f"{'red-team ' + mode:>18}")

    summary, rows = run_redteam(probes, gen, system)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_jsonl(out_dir / "redteam.jsonl", rows)
    return summary


def _judge(cfg: TailorConfig, judge: Any, questions: list[str], refs: list, outputs: dict, reference: str,
           out_dir: Path, say: Callable) -> dict:
    from llmtailor.eval.judge import make_judge

    jc = cfg.eval.judge
    log = out_dir / "judge.jsonl"
    if log.exists():
        log.unlink()
    own = judge is None
    try:
        judge = judge or make_judge(jc)
    except TailorError as e:
        say(f"[red]judge unavailable[/]: {e}")
        return {"status": "failed", "reason": str(e)}
    per_variant: dict[str, dict] = {}
    try:
        from llmtailor.eval.judge import judge_pairwise

        for name, outs in outputs.items():
            if name == reference:
                continue
            per_variant[name] = judge_pairwise(judge, jc, name, questions, refs, outputs[reference], outs, log)
            if per_variant[name]["n_failed"]:
                say(f"[yellow]judge: {per_variant[name]['n_failed']} judgement(s) failed for {name}[/]: "
                    f"{per_variant[name]['failures'][0]['error']}")
    finally:
        if own and hasattr(judge, "close"):
            judge.close()
    gate_values: dict[str, float] = {}
    cand = "tuned" if "tuned" in per_variant else (list(per_variant)[-1] if per_variant else None)
    for name, s in per_variant.items():
        for k in ("win_rate", "tie_rate", "loss_rate", "agreement"):
            if s[k] is not None:
                gate_values[f"{name}.{k}"] = s[k]
                if name == cand:
                    gate_values[k] = s[k]
    total_ok = sum(s["n_judged"] for s in per_variant.values())
    out = {"status": "ok" if total_ok else "failed", "reference": reference, "variants": per_variant,
           "judge": jc.base_url or jc.model, "log": str(log), "gate_values": gate_values}
    if not total_ok:  # the report and gates say why, not just "failed"
        first = next((s["failures"][0]["error"] for s in per_variant.values() if s["failures"]), None)
        out["reason"] = f"every judgement failed: {first}" if first else "no variant to compare with the reference"
    return out
