"""A generator model behind one call, `chat(messages) -> text`: a local model folder or an OpenAI-compatible endpoint.

Synthetic data (Evol-Instruct) and distillation both need "a model that answers a chat": a packaged or local
Hugging Face folder (optionally with a run's adapter), or any `/v1/chat/completions` server (vLLM, llama.cpp,
OpenAI, or `tailor serve` itself). Failures are raised as `GeneratorError` with a `kind` (down, timeout, http,
garbage) so callers can count them and decide whether to go on or stop, without losing rows already written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmtailor.errors import TailorError


class GeneratorConfig(BaseModel):
    """Which model generates: `base_url` (an endpoint) wins; else `run` (a run's adapter), `adapter` or `model`."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="Packaged model name or local Hugging Face folder; default: model.base_model."
    )
    adapter: Path | None = Field(None, description="PEFT adapter folder (or full fine-tuned model folder) to load.")
    run: str | None = Field(
        None, description="A run id or folder under runs_dir (or 'latest'): its adapter on its base model."
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
    endpoint_model: str = Field("default", description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the endpoint's API key (never the key itself)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout for the endpoint.")
    retries: int = Field(1, ge=0, le=10, description="Extra attempts after a failed request (down, timeout, 5xx).")

    @model_validator(mode="after")
    def _check(self) -> GeneratorConfig:
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https:// (got {self.base_url!r})")
        if self.run and self.adapter:
            raise ValueError("set either run (a run's adapter) or adapter (a folder), not both")
        return self

    def describe(self) -> dict[str, Any]:
        """What generated the rows, for the data card and lineage."""
        if self.base_url:
            return {"kind": "endpoint", "base_url": self.base_url, "model": self.endpoint_model}
        return {"kind": "local", "model": self.model, "adapter": str(self.adapter) if self.adapter else None,
                "run": self.run}


class GeneratorError(Exception):
    """One failed generation; `kind` is down | timeout | http | garbage."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Generator(Protocol):
    """Answers one conversation."""

    name: str

    def chat(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int) -> str: ...

    def close(self) -> None: ...


class EndpointGenerator:
    """Any OpenAI-compatible `/chat/completions` endpoint, through httpx."""

    def __init__(self, cfg: GeneratorConfig, seed: int = 0):
        import httpx

        key = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise TailorError(f"generator api_key_env names ${cfg.api_key_env}, which is not set")
        self.cfg, self.seed, self.calls = cfg, seed, 0
        self.name = f"{cfg.base_url} ({cfg.endpoint_model})"
        self.url = str(cfg.base_url).rstrip("/") + "/chat/completions"
        self.client = httpx.Client(headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=cfg.timeout_s)

    def _once(self, body: dict[str, Any]) -> str:
        import httpx

        try:
            r = self.client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise GeneratorError("timeout", f"{self.url}: no answer within {self.cfg.timeout_s:g} s") from None
        except httpx.HTTPError as e:
            raise GeneratorError("down", f"{self.url}: unreachable ({type(e).__name__}: {e})") from None
        if r.status_code != 200:
            raise GeneratorError("http", f"{self.url}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise GeneratorError("garbage", f"{self.url}: not a chat completion: {r.text[:120]!r}") from None
        if not isinstance(content, str):
            raise GeneratorError("garbage", f"{self.url}: message content is {type(content).__name__}, not text")
        return content

    def chat(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int) -> str:
        # OpenAI's `seed`, different per call as the local generator's: an endpoint that honours it (tailor serve,
        # vLLM, llama-server) samples the same rows again when the run is repeated.
        body = {"model": self.cfg.endpoint_model, "messages": messages, "temperature": temperature,
                "max_tokens": max_tokens, "seed": self.seed * 100_003 + self.calls}
        self.calls += 1
        for attempt in range(self.cfg.retries + 1):
            try:
                return self._once(body)
            except GeneratorError as e:
                # A garbage body is the server's answer, not a hiccup: retrying would get the same.
                if e.kind == "garbage" or attempt == self.cfg.retries:
                    raise
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


class LocalGenerator:
    """A local model (+ adapter) through transformers `generate`; sampling when temperature > 0."""

    def __init__(self, model: Any, tokenizer: Any, name: str, seed: int = 0):
        self.model, self.tokenizer, self.name, self.seed = model, tokenizer, name, seed
        self.calls = 0

    def chat(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int) -> str:
        import torch

        from llmtailor.chat import render_prompt

        prompt = render_prompt(self.tokenizer, messages)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        device = next(self.model.parameters()).device
        sample = temperature > 0
        self.calls += 1
        torch.manual_seed(self.seed * 100_003 + self.calls)  # reproducible sampling, different per call
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), max_new_tokens=max_tokens,
                do_sample=sample, temperature=temperature if sample else None, top_p=0.95 if sample else None,
                top_k=None, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    def close(self) -> None:
        pass


def _run_adapter(runs_dir: Path, run: str) -> tuple[Path, str | None]:
    """(adapter folder, base model) of a finished run."""
    from llmtailor.runs import list_runs, read_run, resolve_run

    if run == "latest":
        # A distilled student is never "the latest teacher": rerunning `tailor distill` must not teach itself.
        done = [r for r in list_runs(runs_dir) if read_run(r).get("status") == "completed"
                and not read_run(r).get("distill")]
        run_dir = done[-1] if done else None
    else:
        run_dir = resolve_run(runs_dir, run)
    if run_dir is None:
        raise TailorError(f"{runs_dir}: no completed (non-distilled) run to use (run: latest); train one first")
    info = read_run(run_dir)
    adapter = info.get("adapter_dir")
    if not adapter or not Path(adapter).exists():
        raise TailorError(f"{run_dir}: the run has no adapter (status {info.get('status', '?')}); train it first")
    return Path(adapter), info.get("base_model")


def resolve_local(cfg: GeneratorConfig, model_cfg: Any, runs_dir: Path) -> tuple[Any, Path | None, str]:
    """(ModelConfig to load, adapter or None, display name) for a local generator."""
    adapter = cfg.adapter
    base = cfg.model
    if cfg.run:
        adapter, run_base = _run_adapter(runs_dir, cfg.run)
        base = base or run_base
    model = model_cfg.model_copy(update={"base_model": base}) if base else model_cfg
    name = str(base or model_cfg.base_model) + (f" + {adapter}" if adapter else "")
    return model, adapter, name


def make_generator(cfg: GeneratorConfig, model_cfg: Any, runs_dir: Path, *, seed: int = 0) -> Generator:
    """The endpoint client, or the local model loaded once."""
    if cfg.base_url:
        return EndpointGenerator(cfg, seed=seed)
    from llmtailor.models import load_model

    model, adapter, name = resolve_local(cfg, model_cfg, runs_dir)
    if adapter is not None and not Path(adapter).exists():
        raise TailorError(f"{adapter}: generator adapter folder not found")
    loaded, tok = load_model(model, adapter=adapter)
    return LocalGenerator(loaded, tok, name, seed=seed)
