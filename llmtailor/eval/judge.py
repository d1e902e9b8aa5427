"""LLM-as-judge: pairwise comparison of a variant against base, both orders, with a rubric from the config.

For each held-out row the judge sees the question, the reference answer, and two answers labelled A and B, and
must answer with JSON `{"A": {criterion: 1-5}, "B": {...}, "winner": "A" | "B" | "tie"}`. Every pair is judged
twice with the positions swapped; the variant wins only when both orders agree, loses when both agree against it,
and anything else is a tie (this cancels the judge's position bias). Agreement = share of rows where the two
orders gave the same verdict.

A judgement that fails (endpoint down, timeout, unparseable output) is retried `retries` times, then recorded as
a failure for that row; every finished row is appended to eval/judge.jsonl at once, so nothing is lost when the
run stops half way.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError
from llmtailor.eval.config import JudgeConfig
from llmtailor.eval.metrics import parse_json_output
from llmtailor.io import append_jsonl

_WINNER = re.compile(r"winner\W{0,5}(a|b|tie)\b", re.IGNORECASE)
CRITERIA = ("correctness", "faithfulness", "compliance", "tone")


class JudgeError(Exception):
    """A judgement that could not be obtained or parsed."""


def judge_messages(rubric: str, question: str, reference: str | None, a: str, b: str) -> list[dict]:
    """The judge's prompt: rubric and output format in the system turn, the case in the user turn."""
    system = (
        "You are a strict, impartial judge comparing two answers to the same request. "
        f"{rubric} Then pick the better answer. Reply with one JSON object only, like "
        '{"A": {"correctness": 4, "faithfulness": 5, "compliance": 3, "tone": 4}, '
        '"B": {"correctness": 2, "faithfulness": 3, "compliance": 5, "tone": 4}, "winner": "A"} '
        'where winner is "A", "B" or "tie".'
    )
    ref = f"\n\nReference answer:\n{reference}" if reference else ""
    user = f"Request:\n{question}{ref}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> dict:
    """{winner: A|B|tie, scores: {A: {...}, B: {...}}}; raises JudgeError when no winner can be read."""
    obj, _ = parse_json_output(text)
    winner = None
    scores: dict[str, dict[str, float]] = {}
    if isinstance(obj, dict):
        w = obj.get("winner")
        if isinstance(w, str) and w.strip().lower() in ("a", "b", "tie"):
            winner = w.strip().upper() if w.strip().lower() != "tie" else "tie"
        for side in ("A", "B"):
            s = obj.get(side)
            if isinstance(s, dict):
                scores[side] = {k: float(v) for k, v in s.items()
                                if k in CRITERIA and isinstance(v, int | float) and 1 <= v <= 5}
    if winner is None:
        m = _WINNER.search(text or "")
        if m:
            winner = m.group(1).upper() if m.group(1).lower() != "tie" else "tie"
    if winner is None:
        snippet = (text or "").strip().replace("\n", " ")[:120]
        raise JudgeError(f"unparseable judge output: {snippet!r}")
    return {"winner": winner, "scores": scores}


class EndpointJudge:
    """Any OpenAI-compatible /chat/completions endpoint (vLLM, llama.cpp server, OpenAI, ...)."""

    def __init__(self, cfg: JudgeConfig):
        import httpx

        self.cfg = cfg
        key = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise TailorError(f"eval.judge.api_key_env names ${cfg.api_key_env}, which is not set")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.client = httpx.Client(headers=headers, timeout=cfg.timeout_s)

    def __call__(self, messages: list[dict]) -> str:
        import httpx

        body = {"model": self.cfg.endpoint_model, "messages": messages, "temperature": 0,
                "max_tokens": self.cfg.max_new_tokens}
        try:
            r = self.client.post(self.url, json=body)
        except httpx.HTTPError as e:
            raise JudgeError(f"judge endpoint {self.url} unreachable: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise JudgeError(f"judge endpoint answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            return r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint returned an unexpected body: {r.text[:200]}") from None

    def close(self) -> None:
        self.client.close()


class LocalJudge:
    """A local Hugging Face model folder, greedy decoding."""

    def __init__(self, cfg: JudgeConfig, model: Any = None, tokenizer: Any = None):
        if model is None:
            from llmtailor.config import ModelConfig
            from llmtailor.models import load_model

            model, tokenizer = load_model(ModelConfig(base_model=str(cfg.model)))
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg

    def __call__(self, messages: list[dict]) -> str:
        from llmtailor.generate import generate

        return generate(self.model, self.tokenizer, [messages], max_new_tokens=self.cfg.max_new_tokens)[0]

    def close(self) -> None:
        pass


def make_judge(cfg: JudgeConfig) -> EndpointJudge | LocalJudge:
    if cfg.base_url:
        return EndpointJudge(cfg)
    if not cfg.model:
        raise TailorError("eval.judge needs model (a local folder) or base_url (an OpenAI-compatible endpoint)")
    return LocalJudge(cfg)


def _ask(judge: Callable[[list[dict]], str], messages: list[dict], retries: int, backoff_s: float) -> dict:
    errors = []
    for attempt in range(retries + 1):
        try:
            return parse_verdict(judge(messages))
        except JudgeError as e:
            errors.append(str(e))
            if attempt < retries and backoff_s:
                time.sleep(backoff_s * (attempt + 1))
    raise JudgeError(f"{errors[-1]} (after {retries + 1} attempts)")


def judge_pairwise(
    judge: Callable[[list[dict]], str],
    cfg: JudgeConfig,
    variant: str,
    questions: list[str],
    refs: list[str | None],
    base_answers: list[str],
    answers: list[str],
    log_path: Path | None = None,
    backoff_s: float = 0.5,
) -> dict:
    """Win/tie/loss of `variant` against base over the rows, both orders; failures per row, saved as they come."""
    rows = []
    n = min(len(questions), cfg.max_examples or len(questions))
    for i in range(n):
        row: dict[str, Any] = {"variant": variant, "index": i}
        try:
            # Order 1: variant is A. Order 2: variant is B.
            v1 = _ask(judge, judge_messages(cfg.rubric, questions[i], refs[i], answers[i], base_answers[i]),
                      cfg.retries, backoff_s)
            v2 = _ask(judge, judge_messages(cfg.rubric, questions[i], refs[i], base_answers[i], answers[i]),
                      cfg.retries, backoff_s)
        except JudgeError as e:
            row.update(status="failed", error=str(e))
        else:
            first = {"A": "win", "B": "loss", "tie": "tie"}[v1["winner"]]
            second = {"B": "win", "A": "loss", "tie": "tie"}[v2["winner"]]
            outcome = first if first == second else "tie"
            scores_variant = [s for s in (v1["scores"].get("A"), v2["scores"].get("B")) if s]
            scores_base = [s for s in (v1["scores"].get("B"), v2["scores"].get("A")) if s]
            row.update(status="ok", outcome=outcome, agree=first == second, orders=[first, second],
                       rubric={"variant": _mean_scores(scores_variant), "base": _mean_scores(scores_base)})
        rows.append(row)
        if log_path is not None:
            append_jsonl(log_path, row)
    return summarise(variant, rows)


def _mean_scores(items: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in items for k in s})
    return {k: sum(s[k] for s in items if k in s) / sum(k in s for s in items) for k in keys}


def summarise(variant: str, rows: list[dict]) -> dict:
    """Rates over the rows judged; failures are counted and listed, never silently dropped."""
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    n = len(ok)

    def rate(outcome: str) -> float | None:
        return sum(r["outcome"] == outcome for r in ok) / n if n else None

    rubric_v = _mean_scores([r["rubric"]["variant"] for r in ok if r["rubric"]["variant"]])
    rubric_b = _mean_scores([r["rubric"]["base"] for r in ok if r["rubric"]["base"]])
    return {
        "variant": variant,
        "n_judged": n,
        "n_failed": len(failed),
        "win_rate": rate("win"),
        "tie_rate": rate("tie"),
        "loss_rate": rate("loss"),
        "agreement": sum(r["agree"] for r in ok) / n if n else None,
        "rubric": {"variant": rubric_v, "base": rubric_b},
        "failures": [{"index": r["index"], "error": r["error"]} for r in failed][:50],
    }


def read_log(path: Path) -> list[dict]:
    """Rows saved so far (a truncated last line is ignored)."""
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
