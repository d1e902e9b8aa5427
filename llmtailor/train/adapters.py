"""PEFT configuration for the adapter methods; `full` trains every weight and needs none."""

from __future__ import annotations

from typing import Any

from llmtailor.train.config import TrainConfig


def peft_config(cfg: TrainConfig) -> Any | None:
    """LoraConfig for lora / dora / qlora, None for full fine-tuning."""
    if cfg.method == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        use_dora=cfg.method == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )
