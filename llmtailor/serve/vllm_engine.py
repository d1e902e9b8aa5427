"""`tailor serve --engine vllm`: the same tailor.yaml mapped onto vLLM's OpenAI-compatible server.

vLLM serves one base model with many LoRA adapters per request (punica kernels), which is what a GPU fleet wants.
llmtailor does not re-implement that engine: it turns the config and the registry into the `vllm serve` command
line (base folder, served names, one `--lora-modules name=path` per adapter, the rank and adapter budget), and
says plainly which llmtailor features that server does not carry (per-tenant keys, RAG aliases, guardrails,
routing, canary/shadow traffic split), so nobody believes they are on when they are not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtailor.errors import TailorError

# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class VllmPlan:
    """What `vllm serve` will be started with, and what stays behind."""

    model_dir: Path
    base_name: str
    adapters: dict[str, Path] = field(default_factory=dict)
    max_rank: int = 0
    argv: list[str] = field(default_factory=list)
    not_carried: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "base_name": self.base_name,
                "adapters": {k: str(v) for k, v in self.adapters.items()}, "max_lora_rank": self.max_rank,
                "argv": self.argv, "not_carried": self.not_carried}


def lora_rank_limit(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise TailorError(f"LoRA rank {rank} is larger than vLLM supports ({VLLM_LORA_RANKS[-1]})")


def _adapter_info(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None


def _candidates(cfg: Any, registry: Any) -> tuple[dict[str, Path], list[str]]:
    """Served name -> adapter folder: registered adapters, the deployed stages, and plain adapter aliases."""
    from llmtailor.serve.app import _abs

    found: dict[str, Path] = {}
    skipped: list[str] = []
    if registry is not None:
        for row in registry.adapters():
            found[row["id"]] = Path(row["path"])
        for stage, name in (("production", cfg.project), ("staging", f"{cfg.project}:staging")):
            dep = registry.current(stage)
            if dep is not None and dep.adapter_path:
                found[name] = Path(dep.adapter_path)
                if dep.canary_adapter_id or dep.shadow_adapter_id:
                    skipped.append(f"{stage}: canary/shadow traffic split (vLLM serves {name} = {dep.adapter_id} "
                                   "to everyone)")
    for name, alias in cfg.serve.aliases.items():
        extras = [what for what, on in (("a RAG index", alias.index), ("routing", getattr(alias, "route", None)),
                                        ("guardrails", _guarded(alias.guardrails)),
                                        ("a system prompt", alias.system_prompt)) if on]
        if extras:
            skipped.append(f"alias '{name}': needs {', '.join(extras)} (use --engine transformers)")
            continue
        spec = alias.adapter
        if spec is None:
            skipped.append(f"alias '{name}': plain base alias (call the base as '{_base_name(cfg)}')")
            continue
        if spec.startswith("@"):
            stage_name = cfg.project if spec == "@production" else f"{cfg.project}:staging"
            if stage_name in found:
                found[name] = found[stage_name]
            else:
                skipped.append(f"alias '{name}': nothing is deployed to {spec[1:]}")
            continue
        row = registry.adapter(spec) if registry is not None else None
        run_adapter = cfg.runs_dir / spec / "adapter"
        folder = _abs(Path(spec), cfg.base_dir)
        if row is not None:
            found[name] = Path(row["path"])
        elif (run_adapter / "adapter_config.json").exists():
            found[name] = run_adapter
        elif folder is not None and (folder / "adapter_config.json").exists():
            found[name] = folder
        else:
            skipped.append(f"alias '{name}': adapter '{spec}' not found")
    return found, skipped


def _guarded(g: Any) -> bool:
    return any(v not in ("off", None, []) for k, v in g.model_dump().items() if k not in ("deny_action", "json_schema"))


def _base_name(cfg: Any) -> str:
    from llmtailor.serve.config import served_base_name

    return served_base_name(cfg.model.base_model, cfg.serve.base_name)


def plan_vllm(cfg: Any, registry: Any = None, *, host: str | None = None, port: int | None = None,
              model_dir: Path | None = None) -> VllmPlan:
    """Map tailor.yaml (+ the registry) onto a `vllm serve` command line; nothing is started here."""
    from llmtailor.models import resolve_model_dir

    plan = VllmPlan(model_dir=model_dir or resolve_model_dir(cfg.model), base_name=_base_name(cfg))
    found, plan.not_carried = _candidates(cfg, registry)
    for name, path in found.items():
        info = _adapter_info(path)
        if info is None:
            plan.not_carried.append(f"'{name}': {path} has no readable adapter_config.json (a full fine-tune or a "
                                    "missing folder; serve a full model on its own with model.base_model)")
        elif info.get("use_dora"):
            plan.not_carried.append(f"'{name}': DoRA adapter (vLLM's LoRA kernels do not apply DoRA's magnitude "
                                    "vector; merge it or use --engine transformers)")
        else:
            plan.adapters[name] = path
            plan.max_rank = max(plan.max_rank, int(info.get("r") or 8))
    s = cfg.serve
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(plan.model_dir),
            "--served-model-name", plan.base_name, "--host", host or s.host,
            "--port", str(port if port is not None else s.port), "--dtype", "auto",
            "--max-num-seqs", str(s.max_batch_size)]
    if s.max_model_len:
        argv += ["--max-model-len", str(s.max_model_len)]
    if plan.adapters:
        argv += ["--enable-lora", "--max-lora-rank", str(lora_rank_limit(plan.max_rank)),
                 "--max-loras", str(min(len(plan.adapters), s.max_loaded_adapters)), "--lora-modules",
                 *(f"{name}={path}" for name, path in plan.adapters.items())]
    if s.require_api_key:
        plan.not_carried.append("per-tenant API keys: vLLM checks one shared key (VLLM_API_KEY)")
    plan.not_carried.append("request log, feedback and /metrics names: vLLM exports its own Prometheus metrics")
    plan.argv = argv
    return plan


def check_vllm_available(require_api_key: bool) -> None:
    """Fail before anything starts when vLLM cannot run here, saying what to install or set."""
    if importlib.util.find_spec("vllm") is None:
        raise TailorError("--engine vllm needs the vllm package on a CUDA machine (`pip install vllm`); "
                          "use --engine transformers on this machine")
    if require_api_key and not os.environ.get("VLLM_API_KEY"):
        raise TailorError("serve.require_api_key is on: vLLM takes one shared key from VLLM_API_KEY; set it, or set "
                          "serve.require_api_key: false behind your own gateway")
