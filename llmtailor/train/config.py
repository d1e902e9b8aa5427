"""Training settings: one model for SFT with LoRA, DoRA, QLoRA or full fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """How the base model is fine-tuned. Defaults follow the seeds (lr 2e-4, all linear targets) sized for CPU."""

    model_config = ConfigDict(extra="forbid")

    objective: Literal["sft", "dpo", "orpo", "pretrain"] = Field(
        "sft", description="sft: chat rows; dpo/orpo: preference pairs (section `preference`); pretrain: raw text "
        "(section `pretrain`), loss on every token. See docs/adapt.md."
    )
    init_adapter: str | None = Field(
        None, description="Start from this adapter instead of a fresh one: a run id or folder under runs_dir, or an "
        "adapter folder (e.g. DPO on top of an SFT run, SFT on top of a pretrain run)."
    )
    method: Literal["lora", "dora", "qlora", "full"] = Field(
        "lora", description="lora/dora: adapters on a frozen base; qlora: 4-bit base (CUDA only); full: all weights."
    )
    lora_r: int = Field(16, ge=1, description="Adapter rank.")
    lora_alpha: int = Field(32, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the LM head."
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.05, ge=0.0, le=0.5, description="Share of steps spent warming up.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(4, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated before an optimizer update.")
    max_seq_len: int | None = Field(None, ge=16, description="Token limit per example; default: data.max_seq_len.")
    assistant_only_loss: bool = Field(True, description="Compute loss on assistant tokens only.")
    seed: int = Field(42, description="Seed for initialisation and data order.")
    save_steps: int = Field(25, ge=1, description="Write a checkpoint every N steps (resume starts from the last).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    logging_steps: int = Field(1, ge=1, description="Log loss every N steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    optim: str | None = Field(None, description="Optimizer name for transformers; default adamw_torch (CPU) or "
                              "paged_adamw_8bit (QLoRA).")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")
    group_by_length: bool = Field(True, description="Batch similar lengths together (length buckets): least padding, "
                                  "fastest on CPU. The padding share is recorded in run.json.")
    packing: bool = Field(False, description="Pack several rows into each sequence (no padding at all). Needs an "
                          "attention implementation that keeps packed rows apart; a probe checks, and when it fails "
                          "training falls back to length buckets and says so.")
    padding_free: Literal["auto"] | bool = Field(
        "auto", description="Lay each batch out as one row, its examples end to end with no padding (TRL's "
        "padding_free): the same examples per step, no work spent on pad tokens. auto: on where the attention keeps "
        "the examples apart at no extra cost (llmtailor's CPU attention; flash attention) and a probe confirms it. "
        "true: also with other attention implementations, if the probe confirms they keep examples apart (sdpa "
        "does, through a whole-row mask: slower attention). Otherwise padded batches, and run.json says why.")
    rehearsal: int = Field(0, ge=0, description="Self-rehearsal rows: before training, the model answers this many "
                           "general prompts and those answers join the training rows, so the adapter keeps the "
                           "model's behaviour outside the task (less forgetting). 0: off.")
    rehearsal_prompts: Path | None = Field(None, description="JSONL of {\"prompt\": ...} rows for rehearsal; default: "
                                          "the general prompts shipped with llmtailor.")
    rehearsal_max_new_tokens: int = Field(128, ge=8, description="Token budget of a rehearsal answer; an answer "
                                          "cut off at it ends at its last whole sentence (dropped if it has none).")
    precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None, description="Compute precision of training: bf16 autocast (adapter weights stay fp32) or fp32. auto "
        "picks bf16 where the CPU has native BF16 instructions (AVX-512 BF16, AMX) or the GPU supports it; "
        "default: model.precision.")
    attention: Literal["auto", "model"] = Field(
        "auto", description="auto: on CPU under bf16, llmtailor's matmul attention (about twice as fast as PyTorch's "
        "fused CPU kernel, same memory; see llmtailor/train/attention.py); elsewhere the model's own. model: always "
        "the attention implementation the model loads with (sdpa, flash attention on CUDA).")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.method == "full" and self.target_modules != "all-linear":
            raise ValueError("target_modules only applies to adapter methods (lora, dora, qlora)")
        return self
