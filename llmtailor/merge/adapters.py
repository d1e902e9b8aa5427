"""Merging adapters of one base into a new adapter (PEFT's `add_weighted_adapter`), or an adapter into the base.

Compatibility is checked before any weight is loaded: adapters of different bases, different target modules or (for
the methods that add A and B matrices entry by entry) different ranks cannot be combined meaningfully, and PEFT's own
errors for these cases either come late or not at all (different bases with the same shapes merge silently).
The result is a run folder like any training run (run.json with `parents`, adapter/ or model/), so `tailor eval`,
`tailor report`, `tailor serve` and the registry take it as they take a trained run.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import TailorError
from llmtailor.io import write_json, write_text
from llmtailor.runs import new_run_dir, update_run

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig

SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear")


@dataclass
class Parent:
    """One adapter given to merge: its folder, its PEFT config and the run it came from (if any)."""

    path: Path
    config: dict[str, Any]
    run_id: str | None
    base_model: str | None
    dataset_dir: str | None
    dataset_hash: str | None


def load_parent(cfg: TailorConfig, ref: str) -> Parent:
    """A run id/folder or adapter folder, checked to belong to the configured base."""
    from llmtailor.train.objectives import resolve_adapter

    path, info = resolve_adapter(cfg, ref)
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    return Parent(path, config, info.get("run_id"), info.get("base_model"), info.get("dataset_dir"),
                  info.get("dataset_hash"))


def _targets(config: dict[str, Any]) -> Any:
    t = config.get("target_modules")
    return sorted(t) if isinstance(t, list) else t


def check_compatible(parents: list[Parent], method: str) -> None:
    """Refuse combinations that PEFT cannot merge or would merge into nonsense, naming the adapters at fault."""
    first = parents[0]
    for p in parents[1:]:
        if p.base_model and first.base_model and p.base_model != first.base_model:
            raise TailorError(f"merge: {p.path} was trained on base {p.base_model!r} but {first.path} on "
                              f"{first.base_model!r}; only adapters of the same base can be merged")
        a, b = first.config.get("base_model_name_or_path"), p.config.get("base_model_name_or_path")
        if a and b and Path(str(a)).name != Path(str(b)).name:
            raise TailorError(f"merge: {p.path} adapts {b!r} but {first.path} adapts {a!r}; only adapters of the "
                              "same base can be merged")
    for p in parents:
        if p.config.get("peft_type") != "LORA":
            raise TailorError(f"merge: {p.path} is a {p.config.get('peft_type')} adapter; only LoRA adapters merge")
        if p.config.get("use_dora") and len(parents) > 1:
            raise TailorError(f"merge: {p.path} is a DoRA adapter; PEFT combines LoRA adapters only (a single DoRA "
                              "adapter can still be merged into the base with --into-base)")
    targets = {str(_targets(p.config)) for p in parents}
    if len(targets) > 1:
        listing = "; ".join(f"{p.path}: {_targets(p.config)}" for p in parents)
        raise TailorError(f"merge: the adapters target different modules ({listing}); train them with the same "
                          "train.target_modules")
    ranks = {p.config.get("r") for p in parents}
    if method in SAME_RANK and len(ranks) > 1:
        listing = ", ".join(f"{p.path.parent.name if p.path.name == 'adapter' else p.path.name}: r={p.config.get('r')}"
                            for p in parents)
        raise TailorError(f"merge: method {method!r} needs adapters of equal rank ({listing}); use --method cat "
                          "(ranks add up) or svd, or retrain with the same train.lora_r")


def _weights(method: str, given: list[float] | None, n: int) -> list[float]:
    if given is None:
        return [1.0 / n] * n if method == "linear" else [1.0] * n
    if len(given) != n:
        raise TailorError(f"merge: {len(given)} weight(s) for {n} adapter(s); give one weight per adapter")
    return list(given)


@dataclass
class MergeResult:
    """The new run folder and what it holds."""

    run_dir: Path
    output_dir: Path
    kind: str  # "adapter" or "model"
    parents: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "output_dir": str(self.output_dir), "kind": self.kind,
                "parents": self.parents}


def merge(cfg: TailorConfig, refs: list[str], *, method: str | None = None, weights: list[float] | None = None,
          density: float | None = None, into_base: bool = False, name: str | None = None,
          say: Any = None) -> MergeResult:
    """Combine adapters (several: into a new adapter; with `into_base`: into a full model folder)."""
    import torch
    from peft import PeftModel

    from llmtailor.models import load_model

    say = say or (lambda msg: None)
    if not refs:
        raise TailorError("merge: give at least one adapter (--adapters RUN [RUN ...])")
    if len(refs) == 1 and not into_base:
        raise TailorError("merge: one adapter alone: give two or more to combine, or --into-base to merge it into "
                          "the base model")
    m = cfg.merge
    method = method or m.method
    density = m.density if density is None else density
    if not 0.0 < density <= 1.0:
        raise TailorError(f"merge: --density must be in (0, 1] (got {density})")
    parents = [load_parent(cfg, r) for r in refs]
    if len(parents) > 1:
        check_compatible(parents, method)
    w = _weights(method, weights if weights is not None else m.weights, len(parents))

    say(f"loading the base and {len(parents)} adapter(s)")
    base, tokenizer = load_model(cfg.model, for_training=True, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(parents[0].path), adapter_name="a0")
    for i, p in enumerate(parents[1:], start=1):
        model.load_adapter(str(p.path), adapter_name=f"a{i}")
    active = "a0"
    if len(parents) > 1:
        sparse = "ties" in method or "dare" in method
        say(f"merging with {method} (weights {w}{f', density {density}' if sparse else ''})")
        try:
            model.add_weighted_adapter([f"a{i}" for i in range(len(parents))], w, "merged", combination_type=method,
                                       density=density, majority_sign_method=m.majority_sign_method)
        except ValueError as e:
            raise TailorError(f"merge: PEFT refused the combination: {e}") from None
        active = "merged"
    model.set_adapter(active)

    run_dir = new_run_dir(cfg.runs_dir)
    from llmtailor.train.sft import _code_version

    first = parents[0]
    parent_ids = [p.run_id or str(p.path) for p in parents]
    info = {
        "run_id": run_dir.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "project": cfg.project,
        "name": name, "base_model": cfg.model.base_model, "objective": "merge",
        "method": "full" if into_base else "lora", "status": "running", "parents": parent_ids,
        "parent_adapters": [str(p.path) for p in parents],
        "merge": {"method": method if len(parents) > 1 else None, "weights": w if len(parents) > 1 else None,
                  "density": density if len(parents) > 1 and ("ties" in method or "dare" in method) else None,
                  "into_base": into_base},
        # The held-out split `tailor eval` scores: the first parent's dataset version.
        "dataset_dir": first.dataset_dir, "dataset_hash": first.dataset_hash, "code_version": _code_version(),
    }
    write_text(run_dir / "config.yaml", cfg.to_yaml())
    update_run(run_dir, **info)
    staging = run_dir / ".staging"
    try:
        if into_base:
            out = run_dir / "model"
            merged = model.merge_and_unload()
            merged.save_pretrained(str(staging))
            kind = "model"
        else:
            out = run_dir / "adapter"
            for i in range(len(parents)):
                model.delete_adapter(f"a{i}")
            model.save_pretrained(str(staging), selected_adapters=["merged"])
            nested = staging / "merged"  # PEFT writes a non-default adapter into a sub-folder
            if nested.exists():
                for f in nested.iterdir():
                    shutil.move(str(f), staging / f.name)
                nested.rmdir()
            kind = "adapter"
        tokenizer.save_pretrained(str(staging))
        write_json(staging / "llmtailor.json", {
            "base_model": cfg.model.base_model, "method": info["method"], "objective": "merge",
            "run_id": run_dir.name, "parents": parent_ids, "merge": info["merge"],
            "dataset_hash": first.dataset_hash,
        })
        staging.rename(out)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        update_run(run_dir, status="failed")
        raise
    update_run(run_dir, status="completed", adapter_dir=str(out), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return MergeResult(run_dir, out, kind, parent_ids)
