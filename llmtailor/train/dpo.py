"""Preference tuning through TRL: DPO (DPOTrainer) and the reference-free ORPO (TRL's experimental ORPOTrainer).

Pairs are rendered with the chat template SFT trains on (data/preferences.py), so the answer a pair prefers is the
text the tuned model would write after the same generation prompt. On top of an SFT adapter (`train.init_adapter`)
the adapter itself keeps training and TRL keeps a frozen copy of it as the DPO reference; from the base, a fresh
LoRA is trained against the base (adapters switched off).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import TailorError
from llmtailor.io import file_hash
from llmtailor.runs import update_run
from llmtailor.train import resume as resuming
from llmtailor.train.objectives import (
    loss_summary,
    quiet_trainer,
    resolve_adapter,
    run_trainer,
    save_outputs,
    start_run,
    trainer_args,
)
from llmtailor.train.sft import TrainResult, _set_threads

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig

# Logged by both trainers; the last value of each goes to run.json.
PREF_METRICS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
                "logps/rejected")


def preference_file(cfg: TailorConfig) -> Path:
    """`preference.data`, else the file `tailor data preferences` writes (`preference.out`)."""
    return Path(cfg.preference.data or cfg.preference.out)


def _pair_tokens(dataset: Any) -> int:
    """Tokens read per epoch: the prompt twice (with each answer) plus both answers, as the trainers batch them."""
    cols = set(getattr(dataset, "column_names", None) or [])
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= cols:
        return sum(2 * len(p) + len(c) + len(r) for p, c, r in
                   zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True))
    if {"chosen_input_ids", "rejected_input_ids"} <= cols:  # ORPO's tokenized columns
        return sum(len(c) + len(r) for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"],
                                                   strict=True))
    return 0


def _common_args(cfg: TailorConfig, run_dir: Path, on_cuda: bool, max_len: int) -> dict[str, Any]:
    # fp32 on CPU: SFT's bf16 autocast lives in TailorSFTTrainer's loss, which TRL's preference trainers do not use.
    return dict(**trainer_args(cfg, run_dir, on_cuda=on_cuda, max_len=max_len, optim=cfg.train.optim or "adamw_torch"),
                bf16=False, gradient_checkpointing=False, beta=cfg.preference.beta)


def _adapter_hash(adapter_dir: Path) -> str | None:
    """Hash of the starting adapter's weights: on resume it is the DPO reference again, so it must not have changed."""
    weights = [adapter_dir / n for n in ("adapter_model.safetensors", "adapter_model.bin")]
    found = next((w for w in weights if w.exists()), None)
    return file_hash(found) if found else None


def _resume_inputs(cfg: TailorConfig, run_dir: Path | None) -> tuple[Path, Path, Path | None, Path]:
    """(run folder, preference file, starting adapter, checkpoint) of an interrupted preference run, taken from its
    run.json rather than re-resolved: the pairs and the reference model must be the ones the run began with, or
    the resumed steps would optimise another objective than the checkpointed ones."""
    run_dir, info, checkpoint = resuming.open_resume(run_dir, cfg.train.objective, cfg.train.save_steps)
    pref_file = Path(info.get("preference_data") or preference_file(cfg))
    if not pref_file.exists():
        raise TailorError(f"{run_dir}: its preference data {pref_file} is gone; restore it to resume, or start a new "
                          "run without --resume")
    if info.get("preference_hash") and file_hash(pref_file) != info["preference_hash"]:
        raise TailorError(f"{run_dir}: {pref_file} changed since this run started (the resumed steps would train on "
                          "other pairs); restore the file to resume, or start a new run without --resume")
    parent_dir = Path(info["init_adapter"]) if info.get("init_adapter") else None
    if parent_dir is not None:
        if not (parent_dir / "adapter_config.json").exists():
            raise TailorError(f"{run_dir}: its starting adapter {parent_dir} is gone (it is also the DPO reference); "
                              "restore it to resume, or start a new run without --resume")
        recorded = info.get("init_adapter_hash")
        if recorded and _adapter_hash(parent_dir) != recorded:
            raise TailorError(f"{run_dir}: its starting adapter {parent_dir} changed since this run started (it is "
                              "the DPO reference); restore it to resume, or start a new run without --resume")
    return run_dir, pref_file, parent_dir, checkpoint


def _trainer(cfg: TailorConfig, model: Any, tokenizer: Any, dataset: Any, args: dict[str, Any], peft: Any,
             callbacks: list[Any]) -> Any:
    if cfg.train.objective == "orpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # our docs say ORPO comes from TRL's experimental API
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=model, args=ORPOConfig(**args), train_dataset=dataset, processing_class=tokenizer,
                           peft_config=peft, callbacks=callbacks)
    from trl import DPOConfig, DPOTrainer

    try:
        dpo_args = DPOConfig(**args, loss_type=[cfg.preference.loss_type])
    except ValueError as e:
        raise TailorError(f"preference.loss_type: {e}") from None
    return DPOTrainer(model=model, args=dpo_args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft, callbacks=callbacks)


def train(
    cfg: TailorConfig,
    dataset_dir: Path | None,
    dataset_hash: str | None,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    callbacks: list[Any] | None = None,
    say: Any = None,
) -> TrainResult:
    """DPO / ORPO on `preference.data`; `dataset_dir` is the chat dataset version whose held-out split eval scores."""
    import torch
    from datasets import Dataset

    from llmtailor.data.preferences import load_preferences, render_pair
    from llmtailor.models import choose_device, load_model
    from llmtailor.train.adapters import peft_config
    from llmtailor.train.callbacks import MetricsLogger, RichProgress

    t = cfg.train
    if say is None:
        from llmtailor.cli.output import console

        say = console.print if show_progress else (lambda msg: None)
    choice = choose_device(cfg.model)
    if t.method == "qlora" and choice.device != "cuda":
        raise TailorError("train.method 'qlora' needs a CUDA GPU with bitsandbytes; on CPU use method: lora")
    if t.init_adapter and t.method == "full":
        raise TailorError("train.init_adapter needs an adapter method (lora, dora); for a full fine-tune set "
                          "model.base_model to the model folder to start from")
    checkpoint = start_epoch = None
    if resume:
        run_dir, pref_file, parent_dir, checkpoint = _resume_inputs(cfg, run_dir)
        rows = load_preferences(pref_file, cfg.data.system_prompt)
    else:
        pref_file = preference_file(cfg)
        rows = load_preferences(pref_file, cfg.data.system_prompt)
        parent_dir, parent = (resolve_adapter(cfg, t.init_adapter) if t.init_adapter else (None, {}))
        run_dir = start_run(
            cfg, choice.device, choice.dtype,
            dataset_hash=dataset_hash, dataset_dir=str(dataset_dir) if dataset_dir else None,
            preference_data=str(pref_file), preference_hash=file_hash(pref_file), preference_rows=len(rows),
            init_adapter=str(parent_dir) if parent_dir else None,
            init_adapter_hash=_adapter_hash(parent_dir) if parent_dir else None,
            parents=[parent["run_id"]] if parent.get("run_id") else [],
            beta=cfg.preference.beta, loss_type="orpo" if t.objective == "orpo" else cfg.preference.loss_type,
        )
    threads = _set_threads(t.threads) if choice.device == "cpu" else None
    torch.manual_seed(t.seed)
    model, tokenizer = load_model(cfg.model, adapter=parent_dir, for_training=True,
                                  quantize_4bit=t.method == "qlora")
    max_len = t.max_seq_len or cfg.data.max_seq_len
    dataset = Dataset.from_list([render_pair(tokenizer, r) for r in rows])
    all_callbacks: list[Any] = [MetricsLogger(run_dir / "metrics.jsonl"), *(callbacks or [])]
    if show_progress:
        all_callbacks.append(RichProgress())
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    say(f"{t.objective} on {len(rows)} pairs from {pref_file.name}"
        + (f", starting from adapter {parent_dir}" if parent_dir else ", starting from the base"))
    # With an adapter loaded, TRL trains it and keeps a frozen copy as the reference; a peft_config would stack a
    # second adapter on top.
    peft = None if parent_dir is not None else peft_config(t)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # TRL's notices (tokenizer prefix, padding) are for library users
    try:
        trainer = _trainer(cfg, model, tokenizer, dataset,
                           _common_args(cfg, run_dir, choice.device == "cuda", max_len), peft, all_callbacks)
    except BaseException:
        update_run(run_dir, status="failed")
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
    quiet_trainer(trainer)
    update_run(run_dir, threads=threads, train_rows=len(rows))
    if checkpoint is not None:
        start_epoch = resuming.begin(run_dir, checkpoint)
    _, runtime = run_trainer(
        run_dir, lambda: trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    )
    out_dir = save_outputs(cfg, run_dir, trainer.model, tokenizer, dataset_hash, max_len,
                           {"preference_hash": file_hash(pref_file), "init_adapter": str(parent_dir or "") or None})
    history = trainer.state.log_history
    last = {k: float(h[k]) for h in history for k in PREF_METRICS if k in h}
    first = {}
    for h in reversed(history):
        first.update({k: float(h[k]) for k in PREF_METRICS if k in h})
    losses = loss_summary(history)
    epochs = float(trainer.state.epoch or 0.0) - (start_epoch or 0.0)
    tokens_per_s = _pair_tokens(trainer.train_dataset) * epochs / max(runtime, 1e-9)
    update_run(
        run_dir,
        status="completed",
        steps=int(trainer.state.global_step),
        **losses,
        preference_metrics={"first": first, "last": last},
        train_runtime_s=resuming.total_runtime(run_dir, runtime) if checkpoint else round(runtime, 2),
        train_tokens_per_s=round(tokens_per_s, 1),
        adapter_dir=str(out_dir),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return TrainResult(run_dir, out_dir, losses["final_loss"], int(trainer.state.global_step), runtime, tokens_per_s)
