"""`tailor data synth`: evolve the project's training rows with Evol-Instruct through a generator model.

Seeds are the human rows of the *train* split (the prepared dataset version without any synthetic source), so the
held-out rows are never shown to the generator. Each seed gets `n_per_seed` attempts: the generator evolves its
instruction (`synth.template`: the WizardLM meta-prompt, or a plain `direct` request a small model can follow), then
the answerer (`synth.answerer`, default the generator) answers it. Writing a new ticket and answering it in the task's
schema are different jobs: the base model can do the first, often only a model tuned on the task the second.
An attempt is kept only when the new row is valid, the instruction is not a loop (`repetitive`), its answer passes
`eval.json_schema` (when set), it fits `data.max_seq_len`, and it is neither a copy of its seed nor a duplicate of a
human, test or earlier synthetic row (dedup's own exact and near tests). Kept rows are appended to `synth.output`
(origin `synthetic`) one at a time, so a generator or answerer that dies mid-run loses nothing; a rerun goes on where
the last one stopped. The file is then a data source like any other (`origin: synthetic`), curated by
`tailor data prepare` (PII redaction included) and mixed by `data.mix`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmtailor.data.evol import (
    OPS,
    WIZARDLM_MIN_PARAMS,
    clean_evolved,
    evolution_prompt,
    leaks_template,
    pick_examples,
    pick_ops,
    repetitive,
)
from llmtailor.data.generator import GeneratorConfig, GeneratorError
from llmtailor.data.rows import exact_key, normalise, system_text, words
from llmtailor.errors import TailorError


class SynthConfig(BaseModel):
    """Synthetic rows by Evol-Instruct (`synth:` in tailor.yaml)."""

    model_config = ConfigDict(extra="forbid")

    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig, description="Model that evolves instructions: local folder/run or endpoint."
    )
    answerer: GeneratorConfig | None = Field(
        None, description="Model that answers the evolved instructions (e.g. {run: latest}, tuned on the task); "
        "default: the generator."
    )
    template: Literal["auto", "wizardlm", "direct"] = Field(
        "auto", description="Evolution prompt style. wizardlm: the paper's meta-prompt (GPT-4-class generators); "
        "direct: a plain request with example rows, no meta-vocabulary (small models). auto: wizardlm for a local "
        "generator of 1B parameters or more, else direct (endpoints too: their size is unknown)."
    )
    fewshot: int = Field(2, ge=0, le=8, description="Other seed rows shown as examples of the domain (direct only).")
    noun: str = Field("message", min_length=1, max_length=40, pattern=r"^[A-Za-z][A-Za-z -]*$",
                      description="What a seed instruction is, in the direct template's words (message, question...).")
    output: Path = Field(Path("data/synthetic.jsonl"), description="JSONL the kept rows are appended to.")
    n_per_seed: int = Field(2, ge=1, le=50, description="Evolution attempts per seed row.")
    ops: list[str] = Field(
        default_factory=lambda: list(OPS),
        description="Evolutions to draw from: constraints, deepen, concretise, reasoning (in-depth), breadth.",
    )
    max_seeds: int | None = Field(None, ge=1, description="Use at most this many seed rows (first in train order).")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature of the evolution step.")
    answer_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Temperature of the answer (0: greedy).")
    max_new_tokens: int = Field(192, ge=8, description="Token budget of an evolved instruction.")
    answer_max_new_tokens: int = Field(192, ge=8, description="Token budget of an answer.")
    max_consecutive_failures: int = Field(
        3, ge=1, description="Stop (rows kept, resumable) after this many generator failures in a row."
    )
    seed: int = Field(0, description="Seed of the op choice and of sampling.")

    @field_validator("ops")
    @classmethod
    def _check_ops(cls, value: list[str]) -> list[str]:
        bad = [op for op in value if op not in OPS]
        if bad or not value:
            raise ValueError(f"unknown op(s) {bad}; choose from {', '.join(OPS)}" if bad else "at least one op")
        return value


@dataclass
class SynthResult:
    """What a synth run did (this run) and what the output holds (all runs)."""

    output: Path
    seeds: int
    attempts: int
    kept: int
    skipped_done: int
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    totals: dict[str, Any] = field(default_factory=dict)
    template: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "seeds": self.seeds, "attempts": self.attempts, "kept": self.kept,
                "skipped_done": self.skipped_done, "dropped": dict(self.dropped), "errors": dict(self.errors),
                "totals": self.totals, "template": self.template}


class DupIndex:
    """Exact and near-duplicate test against a growing set of rows, with dedup's own rules."""

    def __init__(self, threshold: float, ngram: int):
        from llmtailor.data.dedup import shingles

        self.threshold, self.ngram, self._shingles = threshold, ngram, shingles
        self.exact: dict[str, str] = {}
        self.grams: list[tuple[set[str], str, str]] = []

    def add(self, messages: list[dict[str, str]], label: str) -> None:
        self.exact.setdefault(exact_key(messages), label)
        self.grams.append((self._shingles(words(messages), self.ngram), system_text(messages), label))

    def match(self, messages: list[dict[str, str]]) -> str | None:
        """Label of the first row this one duplicates, or None."""
        hit = self.exact.get(exact_key(messages))
        if hit is not None:
            return hit
        from llmtailor.data.dedup import jaccard

        grams, system = self._shingles(words(messages), self.ngram), system_text(messages)
        for other, other_system, label in self.grams:
            if other_system == system and jaccard(grams, other) >= self.threshold:
                return label
        return None


def instruction_of(messages: list[dict[str, str]]) -> str:
    """The last user turn: what Evol-Instruct evolves."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def seed_data_config(cfg: Any) -> Any:
    """data config of the human rows only: no synthetic output, no non-human source, no mixing."""
    out = Path(cfg.synth.output).resolve() if cfg.synth else None
    sources = [s for s in cfg.data.sources
               if (s.origin in (None, "human")) and (out is None or Path(s.path).resolve() != out)]
    if not sources:
        raise TailorError("data.sources: no human source to take seed rows from (all are synthetic or the output)")
    return cfg.data.model_copy(update={"sources": sources, "mix": None})


def _is_copy(evolved: str, seed: str, threshold: float) -> bool:
    from llmtailor.data.dedup import jaccard, shingles

    if normalise(evolved) == normalise(seed):
        return True
    a, b = shingles(normalise(evolved).split(), 3), shingles(normalise(seed).split(), 3)
    return jaccard(a, b) >= threshold


def resolve_template(template: str, generator: Any) -> str:
    """`auto` -> wizardlm for a local generator of >= 1B parameters, else direct (an endpoint's size is unknown)."""
    if template != "auto":
        return template
    model = getattr(generator, "model", None)
    params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
    return "wizardlm" if params >= WIZARDLM_MIN_PARAMS else "direct"


class Synthesizer:
    """One evolution attempt at a time: the generator evolves, the answerer answers, checks keep or drop (reason)."""

    def __init__(self, cfg: Any, generator: Any, tokenizer: Any, schema: dict | None, dups: DupIndex,
                 answerer: Any = None, template: str = "wizardlm"):
        self.cfg, self.s, self.gen, self.tok = cfg, cfg.synth, generator, tokenizer
        self.answerer = answerer if answerer is not None else generator
        self.schema, self.dups, self.template = schema, dups, template
        self.last = ""

    def attempt(self, seed_messages: list[dict[str, str]], op: str, examples: list[str] | None = None
                ) -> tuple[dict[str, Any] | None, str]:
        """(row, "") or (None, drop reason). GeneratorError propagates (with `.role` generator or answerer): the
        caller decides to go on or stop."""
        from llmtailor.data.validate import RawRow, check_row, token_length

        seed_instruction = instruction_of(seed_messages)
        prompt = evolution_prompt(op, seed_instruction, self.template, examples, self.s.noun)
        raw = _call(self.gen, "generator", prompt, self.s.temperature, self.s.max_new_tokens)
        evolved = clean_evolved(raw)
        self.last = evolved or raw  # shown in the log when the attempt is dropped, to see why
        if not evolved:
            return None, "empty_instruction"
        if leaks_template(evolved):
            return None, "template_leak"
        if repetitive(evolved):
            return None, "repetitive"
        if _is_copy(evolved, seed_instruction, self.cfg.data.dedup.threshold):
            return None, "copy_of_seed"
        system = [m for m in seed_messages[:1] if m["role"] == "system"]
        prompt = [*system, {"role": "user", "content": evolved}]
        answer = _call(self.answerer, "answerer", prompt, self.s.answer_temperature,
                       self.s.answer_max_new_tokens).strip()
        self.last = f"{evolved}\n---\n{answer}"
        if not answer:
            return None, "empty_answer"
        row = {"messages": [*prompt, {"role": "assistant", "content": answer}], "origin": "synthetic",
               "synth": {"op": op, "template": self.template}}
        checked, problems = check_row(RawRow(0, row), self.s.output, system_prompt=self.cfg.data.system_prompt)
        if checked is None:
            return None, f"invalid: {problems[0].kind}"
        if self.schema is not None:
            from llmtailor.eval.metrics import json_compliance

            if not json_compliance(answer, self.schema)["valid"]:
                return None, "schema"
        if token_length(self.tok, checked.messages) > self.cfg.data.max_seq_len:
            return None, "overlength"
        dup = self.dups.match(checked.messages)
        if dup is not None:
            return None, f"duplicate_{dup}"
        row["messages"] = checked.messages
        self.dups.add(checked.messages, "synthetic")
        return row, ""


def _call(model: Any, role: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
    """One chat call; a failure is tagged with the role (generator | answerer) so the stop message names it."""
    try:
        return model.chat(messages, temperature=temperature, max_tokens=max_tokens)
    except GeneratorError as e:
        e.role = role  # type: ignore[attr-defined]
        raise


def run_synth(cfg: Any, *, show_progress: bool = True, generator: Any = None, answerer: Any = None,
              say: Any = None) -> SynthResult:
    """Evolve the train split's human rows into `synth.output`; resumable, nothing kept is ever lost."""
    from llmtailor.data.journal import Journal
    from llmtailor.data.prepare import prepare
    from llmtailor.data.versions import load_version
    from llmtailor.io import read_jsonl, stable_hash, write_json
    from llmtailor.models import load_tokenizer

    if cfg.synth is None:
        raise TailorError(f"{cfg.path or 'tailor.yaml'}: no synth section; add `synth:` (see docs/adapt.md)")
    s = cfg.synth
    say = say or (lambda msg: None)
    tokenizer = load_tokenizer(cfg.model)
    version = prepare(seed_data_config(cfg), tokenizer, show_progress=show_progress)
    version = load_version(version.path)
    train = [row for _, row in read_jsonl(version.train_file)]
    tests = [row for _, row in read_jsonl(version.eval_file)]
    seeds = [row for row in train if row.get("origin", "human") == "human"]
    seeds = seeds[: s.max_seeds] if s.max_seeds else seeds
    schema = None
    if cfg.eval.json_schema is not None:
        from llmtailor.eval.metrics import load_schema

        schema = load_schema(cfg.eval.json_schema)
    dups = DupIndex(cfg.data.dedup.threshold, cfg.data.dedup.ngram)
    for row in train:
        dups.add(row["messages"], "human")
    for row in tests:
        dups.add(row["messages"], "test")

    journal = Journal(s.output, "attempt")
    for row in journal.rows:
        if isinstance(row.get("messages"), list):
            dups.add(row["messages"], "synthetic")
    plan = []
    for seed in seeds:
        key = stable_hash(exact_key(seed["messages"]), 12)
        for k, op in enumerate(pick_ops(s.ops, s.n_per_seed, key, s.seed)):
            plan.append((f"{key}:{k}", seed, op))
    todo = [p for p in plan if p[0] not in journal.done]
    result = SynthResult(Path(s.output), len(seeds), 0, 0, len(plan) - len(todo))
    from llmtailor.data.generator import make_generator

    if todo and generator is None:
        generator = make_generator(s.generator, cfg.model, cfg.runs_dir, seed=s.seed)
    if todo and answerer is None and s.answerer is not None:
        answerer = make_generator(s.answerer, cfg.model, cfg.runs_dir, seed=s.seed)
    result.template = resolve_template(s.template, generator) if todo else s.template
    synth = Synthesizer(cfg, generator, tokenizer, schema, dups, answerer=answerer, template=result.template)
    instructions = [instruction_of(seed["messages"]) for seed in seeds]
    from llmtailor.cli.output import progress_bar

    try:
        with journal, progress_bar("evolving", len(todo), enabled=show_progress) as advance:
            for key, seed, op in todo:
                result.attempts += 1
                examples = pick_examples(instructions, instruction_of(seed["messages"]), s.fewshot, key, s.seed)
                try:
                    row, reason = synth.attempt(seed["messages"], op, examples)
                except GeneratorError as e:
                    result.errors[e.kind] += 1
                    journal.failed(key, e, limit=s.max_consecutive_failures, noun="rows", command="tailor data synth",
                                   setting=f"synth.{getattr(e, 'role', 'generator')}")
                    advance()
                    continue
                if row is None:
                    result.dropped[reason] += 1
                    journal.drop(key, reason, op=op, text=synth.last[:300])
                else:
                    row["synth"]["seed"] = key.split(":")[0]
                    result.kept += 1
                    journal.keep(key, row, op=op)
                advance()
    finally:
        for model in {id(m): m for m in (generator, answerer) if m is not None}.values():
            if hasattr(model, "close"):
                model.close()
        result.totals = journal.totals()
        write_json(Path(s.output).with_name(Path(s.output).name + ".summary.json"),
                   {**result.as_dict(), "seed_dataset": version.hash, "generator": s.generator.describe(),
                    "answerer": (s.answerer or s.generator).describe(),
                    "answerer_is_generator": s.answerer is None})
    say(f"kept {result.kept} of {result.attempts} attempts")
    return result
