"""What the training objectives share: picking the trainer for `train.objective`, the starting adapter, the run folder.

SFT lives in sft.py; DPO/ORPO in dpo.py and continued pretraining in pretrain.py reuse these pieces so every
objective writes the same run folder (run.json, config.yaml, metrics.jsonl, adapter/ or model/) that eval, report,
export and the registry read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import TailorError
from llmtailor.io import write_json, write_text
from llmtailor.runs import new_run_dir, read_run, update_run

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig


def trainer_for(cfg: TailorConfig) -> Callable[..., Any]:
    """The `train(cfg, dataset_dir, dataset_hash, ...)` function of the configured objective."""
    objective = cfg.train.objective
    if objective in ("dpo", "orpo"):
        from llmtailor.train.dpo import train as train_pref

        return train_pref
    if objective == "pretrain":
        from llmtailor.train.pretrain import train as train_pt

        return train_pt
    from llmtailor.train.sft import train as train_sft

    return train_sft


def needs_chat_data(cfg: TailorConfig) -> bool:
    """Every objective but pretraining reads chat rows; pretraining prepares them only when there are some (their
    held-out split is then what `tailor eval` measures the pretrained model on)."""
    return cfg.train.objective != "pretrain" or bool(cfg.data.sources or cfg.data.test_sources)


def resolve_adapter(cfg: TailorConfig, ref: str | Path) -> tuple[Path, dict[str, Any]]:
    """`train.init_adapter` (a run id, a run folder or an adapter folder) to an adapter folder and its run.json.

    The adapter must have been trained on the configured base: an adapter of another base would load with
    mismatched shapes or, worse, load and mean nothing.
    """
    path = Path(ref).expanduser()
    candidates = [path, cfg.runs_dir / str(ref)]
    if not path.is_absolute():
        candidates.insert(1, cfg.base_dir / path)
    for c in candidates:
        if (c / "run.json").exists():
            info = read_run(c)
            adapter = Path(info.get("adapter_dir") or c / "adapter")
            if not (adapter / "adapter_config.json").exists():
                raise TailorError(f"{c}: run has no LoRA adapter to start from (full fine-tunes and merged models "
                                  "are whole models: set model.base_model to their model/ folder instead)")
            break
        if (c / "adapter_config.json").exists():
            adapter, info = c, {}
            meta = c / "llmtailor.json"
            if meta.exists():
                import json

                info = json.loads(meta.read_text(encoding="utf-8"))
            break
    else:
        raise TailorError(f"train.init_adapter: {ref!r} is neither a run (id or folder with run.json) nor an adapter "
                          "folder (with adapter_config.json)")
    base = info.get("base_model")
    if base and base != cfg.model.base_model:
        raise TailorError(f"train.init_adapter: {adapter} was trained on base {base!r}, but model.base_model is "
                          f"{cfg.model.base_model!r}; an adapter only fits the base it was trained on")
    return adapter, info


def trainer_args(cfg: TailorConfig, run_dir: Path, *, on_cuda: bool, max_len: int, optim: str) -> dict[str, Any]:
    """The Trainer arguments every objective takes from `train:` alike (schedule, checkpoints, seeds, device, quiet
    logging); each objective adds its own (precision, packing, DPO's beta)."""
    t = cfg.train
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps else -1,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optim,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=not on_cuda,
        max_length=max_len,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def run_trainer(run_dir: Path, train: Callable[[], Any]) -> tuple[Any, float]:
    """(what `train()` returned, seconds): Ctrl-C leaves the run `interrupted` (resumable), any error `failed`."""
    started = time.perf_counter()
    try:
        out = train()
    except KeyboardInterrupt:
        update_run(run_dir, status="interrupted")
        raise
    except Exception:
        update_run(run_dir, status="failed")
        raise
    return out, time.perf_counter() - started


def start_run(cfg: TailorConfig, device: str, dtype: Any, **fields: Any) -> Path:
    """A new run folder with the resolved config and the run.json fields every objective records."""
    from llmtailor.train.sft import _code_version

    run_dir = new_run_dir(cfg.runs_dir)
    write_text(run_dir / "config.yaml", cfg.to_yaml())
    update_run(
        run_dir,
        run_id=run_dir.name,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        project=cfg.project,
        base_model=cfg.model.base_model,
        objective=cfg.train.objective,
        method=cfg.train.method,
        device=device,
        dtype=str(dtype).replace("torch.", ""),
        code_version=_code_version(),
        status="running",
        **fields,
    )
    return run_dir


def save_outputs(cfg: TailorConfig, run_dir: Path, model: Any, tokenizer: Any, dataset_hash: str | None,
                 max_len: int, extra: dict[str, Any] | None = None) -> Path:
    """adapter/ (only the trained adapter, never TRL's frozen reference copy) or model/, with tokenizer + template."""
    full = cfg.train.method == "full"
    out_dir = run_dir / ("model" if full else "adapter")
    if full:
        model.save_pretrained(str(out_dir))
    else:
        model.save_pretrained(str(out_dir), selected_adapters=["default"])
    tokenizer.save_pretrained(str(out_dir))
    write_json(out_dir / "llmtailor.json", {
        "base_model": cfg.model.base_model, "method": cfg.train.method, "objective": cfg.train.objective,
        "dataset_hash": dataset_hash, "run_id": run_dir.name, "max_seq_len": max_len, **(extra or {}),
    })
    return out_dir


def loss_summary(log_history: list[dict[str, Any]]) -> dict[str, float | None]:
    """First and last logged training loss."""
    losses = [float(h["loss"]) for h in log_history if "loss" in h]
    return {"first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}


def quiet_trainer(trainer: Any) -> None:
    """The Trainer prints log dicts on stdout when tqdm is off; stdout is reserved for --json output."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
