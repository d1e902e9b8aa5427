"""`tailor distill`: a teacher answers the training prompts, the student is fine-tuned on the answers that pass.

Answers are appended to `distill.output` as they come (resumable like `tailor data synth`: a teacher that dies
mid-run loses nothing, a rerun asks only the prompts still open). Empty, over-length, schema-failing (when
`eval.json_schema` is set) and low-judged (when `distill.min_judge_score` is set) answers are dropped and counted.
The kept answers become a dataset version of their own (train = teacher answers, eval = the parent version's
held-out rows, unchanged), the student (`model.base_model`) is trained on it through the SFT path, with the KL to
the teacher's distribution added when `distill.logit.enabled`. The run records its teacher (lineage), and the
teacher's answers to the same held-out rows are scored so student, teacher and base compare on the same rows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.data.generator import GeneratorError
from llmtailor.errors import TailorError

JUDGE_PROMPT = (
    "Rate how well the answer follows the instruction and how correct it is, from 1 (useless) to 10 (perfect). "
    "Reply with the number only.\n\n[Instruction]\n{question}\n\n[Answer]\n{answer}"
)


@dataclass
class DistillResult:
    """Teacher answers (this run and in all), the distilled dataset and the student run."""

    prompts: int
    asked: int
    kept: int
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    dataset_hash: str | None = None
    dataset_dir: Path | None = None
    run_dir: Path | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    teacher_eval: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "asked": self.asked, "kept": self.kept, "dropped": dict(self.dropped),
                "errors": dict(self.errors), "dataset_hash": self.dataset_hash,
                "dataset_dir": str(self.dataset_dir) if self.dataset_dir else None,
                "run_dir": str(self.run_dir) if self.run_dir else None, "teacher": self.teacher,
                "teacher_eval": self.teacher_eval}


def _prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    """The row's conversation up to (not including) its last assistant turn."""
    msgs = row.get("messages") or []
    return msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else msgs


def collect_prompts(cfg: Any, train_rows: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    """Prompts for the teacher: the train split's, synth.output's, or both (in that order, deduplicated)."""
    from llmtailor.data.rows import exact_key
    from llmtailor.io import read_jsonl

    d = cfg.distill
    rows: list[dict[str, Any]] = []
    if d.prompts in ("train", "both"):
        rows += train_rows
    if d.prompts in ("synthetic", "both"):
        if cfg.synth is None or not Path(cfg.synth.output).exists():
            raise TailorError("distill.prompts uses synthetic prompts, but there is no synth.output file yet; run "
                              "`tailor data synth` first")
        rows += [r for _, r in read_jsonl(cfg.synth.output)]
    seen: set[str] = set()
    prompts = []
    for row in rows:
        p = _prompt(row)
        key = exact_key(p)
        if p and p[-1].get("role") == "user" and key not in seen:
            seen.add(key)
            prompts.append(p)
    if not prompts:
        raise TailorError(f"distill.prompts '{d.prompts}': no prompts found")
    return prompts[: d.max_prompts] if d.max_prompts else prompts


def judge_score(judge: Any, question: str, answer: str) -> float | None:
    """1-10 from the judge's reply (first number), None when it gives none."""
    reply = judge([{"role": "user", "content": JUDGE_PROMPT.format(question=question, answer=answer)}])
    found = re.search(r"\d+(?:\.\d+)?", reply or "")
    return min(10.0, float(found.group())) if found else None


class AnswerFilter:
    """Why a teacher answer is not kept ('' when it is)."""

    def __init__(self, cfg: Any, tokenizer: Any, schema: dict | None, judge: Any = None):
        self.cfg, self.tok, self.schema, self.judge = cfg, tokenizer, schema, judge

    def reason(self, prompt: list[dict[str, str]], answer: str) -> str:
        from llmtailor.data.validate import token_length

        if not answer.strip():
            return "empty"
        if self.schema is not None:
            from llmtailor.eval.metrics import json_compliance

            if not json_compliance(answer, self.schema)["valid"]:
                return "schema"
        if token_length(self.tok, [*prompt, {"role": "assistant", "content": answer}]) > self.cfg.data.max_seq_len:
            return "overlength"
        if self.judge is not None:
            score = judge_score(self.judge, prompt[-1]["content"], answer)
            if score is None:
                return "judge_unparseable"
            if score < self.cfg.distill.min_judge_score:
                return "judge_below_threshold"
        return ""


def ask_teacher(cfg: Any, teacher: Any, prompts: list[list[dict[str, str]]], answer_filter: AnswerFilter,
                result: DistillResult, *, show_progress: bool) -> list[dict[str, Any]]:
    """Answers for every prompt not answered yet, appended as they come; returns the kept rows for `prompts`."""
    from llmtailor.cli.output import progress_bar
    from llmtailor.data.journal import Journal
    from llmtailor.data.rows import exact_key
    from llmtailor.io import stable_hash

    d = cfg.distill
    journal = Journal(d.output, "prompt")
    keyed = [(stable_hash(exact_key(p), 16), p) for p in prompts]
    todo = [(k, p) for k, p in keyed if k not in journal.done]
    with journal, progress_bar("teacher", len(todo), enabled=show_progress) as advance:
        for key, prompt in todo:
            result.asked += 1
            try:
                answer = teacher.chat(prompt, temperature=d.temperature, max_tokens=d.max_new_tokens).strip()
            except GeneratorError as e:
                result.errors[e.kind] += 1
                journal.failed(key, e, limit=d.max_consecutive_failures, setting="distill.teacher", noun="answers",
                               command="tailor distill")
                advance()
                continue
            why = answer_filter.reason(prompt, answer)
            if why:
                result.dropped[why] += 1
                journal.drop(key, why)
            else:
                result.kept += 1
                journal.keep(key, {"messages": [*prompt, {"role": "assistant", "content": answer}],
                                   "origin": "synthetic", "teacher": result.teacher.get("name")})
            advance()
    wanted = {k for k, _ in keyed}
    rows = [r for r in journal.rows if r.get("_prompt") in wanted]
    return [{k: v for k, v in r.items() if k != "_prompt"} for r in rows]


def write_distilled(cfg: Any, parent: Any, rows: list[dict[str, Any]], result: DistillResult) -> tuple[str, Path]:
    """The distilled dataset version: teacher answers for train, the parent's held-out rows for eval."""
    from llmtailor.data.versions import find_version, write_version
    from llmtailor.io import read_jsonl, stable_hash

    evals = [r for _, r in read_jsonl(parent.eval_file)]
    hash_ = stable_hash({"parent": parent.hash, "teacher": result.teacher, "train": rows})
    card = dict(parent.card)
    card.update(hash=hash_, train_rows=len(rows), rows_kept=len(rows) + len(evals), distill={
        "parent_dataset": parent.hash, "teacher": result.teacher, "prompts": result.prompts,
        "answers_kept": len(rows), "dropped": dict(result.dropped), "errors": dict(result.errors)})
    card.pop("mix", None)
    output_dir = Path(parent.path).parent
    existing = find_version(output_dir, hash_)
    path = existing.path if existing is not None else write_version(output_dir, hash_, rows, evals, card)
    return hash_, path


def teacher_eval(cfg: Any, teacher: Any, parent: Any, answer_filter: AnswerFilter) -> dict[str, Any]:
    """The teacher's answers to the held-out rows, scored with the ladder's metrics (for student vs teacher)."""
    from llmtailor.eval.metrics import score_examples
    from llmtailor.io import read_jsonl

    rows = [r for _, r in read_jsonl(parent.eval_file)]
    rows = rows[: cfg.eval.max_examples] if cfg.eval.max_examples else rows
    outs, failed = [], 0
    for row in rows:
        try:
            outs.append(teacher.chat(_prompt(row), temperature=0.0, max_tokens=cfg.eval.max_new_tokens))
        except GeneratorError:
            failed += 1
            outs.append("")
    refs = [row["messages"][-1]["content"] for row in rows]
    metrics = [m for m in cfg.eval.metrics if m != "loss"]
    if answer_filter.schema is None:
        metrics = [m for m in metrics if m not in ("json_compliance", "field_accuracy")]
    agg, per = score_examples(outs, refs, answer_filter.schema, metrics)
    fields = [sum(r["field_accuracy"].values()) / len(r["field_accuracy"]) for r in per if r.get("field_accuracy")]
    if fields:
        agg["field_accuracy_mean"] = sum(fields) / len(fields)
    return {"rows": len(rows), "failed": failed, "aggregate": agg}


def _judge(cfg: Any) -> Any:
    """eval.judge as a callable, when distill.min_judge_score asks for one."""
    if cfg.distill.min_judge_score is None:
        return None
    if not cfg.eval.judge.model and not cfg.eval.judge.base_url:
        raise TailorError("distill.min_judge_score needs eval.judge.model (a local folder) or eval.judge.base_url")
    from llmtailor.eval.judge import make_judge

    return make_judge(cfg.eval.judge)


def _logit_kwargs(cfg: Any, teacher: Any, student_tokenizer: Any) -> dict[str, Any]:
    """The KD trainer's extra arguments: the teacher model itself, after checking it speaks the student's tokens."""
    from llmtailor.data.generator import LocalGenerator
    from llmtailor.data.versions import tokenizer_fingerprint

    if not isinstance(teacher, LocalGenerator):
        raise TailorError("distill.logit needs a local teacher (model, adapter or run), not an endpoint")
    if tokenizer_fingerprint(teacher.tokenizer) != tokenizer_fingerprint(student_tokenizer):
        raise TailorError(f"distill.logit: teacher {teacher.name} and student {cfg.model.base_model} do not share a "
                          "tokenizer, so their token distributions cannot be compared; set distill.logit.enabled: "
                          "false to distil on the teacher's text only")
    lg = cfg.distill.logit
    return {"teacher": teacher.model, "kd_temperature": lg.temperature, "kd_alpha": lg.alpha}


def run_distill(cfg: Any, *, show_progress: bool = True, teacher: Any = None, train_student: bool = True,
                say: Any = None) -> DistillResult:
    """Teacher answers -> filter -> distilled dataset version -> student run with lineage to the teacher."""
    from llmtailor.data.generator import make_generator, resolve_local
    from llmtailor.data.versions import load_version
    from llmtailor.io import read_jsonl
    from llmtailor.models import load_tokenizer
    from llmtailor.pipeline import prepare_stage
    from llmtailor.runs import read_run, update_run

    if cfg.distill is None:
        raise TailorError(f"{cfg.path or 'tailor.yaml'}: no distill section; add `distill:` (see docs/adapt.md)")
    d = cfg.distill
    say = say or (lambda msg: None)
    parent = load_version(prepare_stage(cfg, show_progress=show_progress).path)
    prompts = collect_prompts(cfg, [r for _, r in read_jsonl(parent.train_file)])
    tokenizer = load_tokenizer(cfg.model)
    schema = None
    if cfg.eval.json_schema is not None:
        from llmtailor.eval.metrics import load_schema

        schema = load_schema(cfg.eval.json_schema)
    described = d.teacher.describe()
    if not d.teacher.base_url:
        _, adapter, name = resolve_local(d.teacher, cfg.model, cfg.runs_dir)
        described.update(name=name, adapter=str(adapter) if adapter else None)
        if d.teacher.run and adapter is not None:  # the teacher run becomes the student's parent (lineage)
            described["run_id"] = read_run(Path(adapter).parent).get("run_id") or Path(adapter).parent.name
    else:
        described["name"] = f"{d.teacher.base_url} ({d.teacher.endpoint_model})"
    result = DistillResult(prompts=len(prompts), asked=0, kept=0, teacher=described)
    own_teacher = teacher is None
    teacher = teacher or make_generator(d.teacher, cfg.model, cfg.runs_dir)
    judge = None
    try:
        extra: dict[str, Any] = {}
        if d.logit.enabled and train_student:  # checked before the teacher is asked anything
            from llmtailor.train.kd import DistillTrainer

            extra = {"trainer_class": DistillTrainer, "trainer_kwargs": _logit_kwargs(cfg, teacher, tokenizer)}
        judge = _judge(cfg)
        answer_filter = AnswerFilter(cfg, tokenizer, schema, judge)
        rows = ask_teacher(cfg, teacher, prompts, answer_filter, result, show_progress=show_progress)
        if not rows:
            raise TailorError(f"distill: the teacher's answers were all dropped ({dict(result.dropped)}); nothing to "
                              "train the student on")
        result.dataset_hash, result.dataset_dir = write_distilled(cfg, parent, rows, result)
        say(f"distilled dataset {result.dataset_hash}: {len(rows)} teacher answers")
        result.teacher_eval = teacher_eval(cfg, teacher, parent, answer_filter)
        if train_student:
            from llmtailor.registry.hooks import record_dataset, record_training
            from llmtailor.train.sft import train

            trained = train(cfg, result.dataset_dir, result.dataset_hash, show_progress=show_progress, **extra)
            result.run_dir = trained.run_dir
            parents = [described["run_id"]] if described.get("run_id") else []
            update_run(trained.run_dir, objective="distill", parents=parents, teacher=described, distill={
                "parent_dataset": parent.hash, "prompts": d.prompts, "answers_kept": len(rows),
                "dropped": dict(result.dropped), "errors": dict(result.errors),
                "logit": d.logit.model_dump() if d.logit.enabled else None, "teacher_eval": result.teacher_eval})
            record_dataset(cfg, load_version(result.dataset_dir))
            record_training(cfg, trained.run_dir)
    finally:
        if own_teacher:
            teacher.close()
        if judge is not None:
            judge.close()
    return result


def comparison(run_dir: Path) -> dict[str, dict[str, Any]]:
    """student (tuned), base and teacher headline metrics on the same held-out rows, once the run is evaluated."""
    import json

    from llmtailor.runs import read_run

    info = read_run(run_dir)
    out: dict[str, dict[str, Any]] = {}
    results = run_dir / "eval" / "results.json"
    if results.exists():
        variants = json.loads(results.read_text(encoding="utf-8")).get("variants", {})
        for name, label in (("base", "base"), ("tuned", "student")):
            if name in variants:
                out[label] = variants[name]
    teacher = (info.get("distill") or {}).get("teacher_eval")
    if teacher:
        out["teacher"] = {**teacher["aggregate"], "n": teacher["rows"]}
    return out
