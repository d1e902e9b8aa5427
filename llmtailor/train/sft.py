"""Supervised fine-tuning: build the model, adapters and TRL trainer from the config, train, save.

TRL's defaults assume a GPU; CPU-safe settings (fp32, no gradient checkpointing, use_cpu) are picked
here from the device, so the same config runs on a laptop and on CUDA (bf16, QLoRA) unchanged.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor import __version__
from llmtailor.cpu_memory import state as cpu_memory_state
from llmtailor.errors import TailorError
from llmtailor.io import write_json
from llmtailor.runs import read_run, update_run
from llmtailor.train.objectives import run_trainer, start_run, trainer_args
from llmtailor.train.resume import begin, resume_checkpoint
from llmtailor.train.resume import last_checkpoint as _last_checkpoint  # noqa: F401  (tests import it from here)

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_dir: Path
    adapter_dir: Path
    final_loss: float | None
    steps: int
    runtime_s: float
    tokens_per_s: float

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"], d["adapter_dir"] = str(self.run_dir), str(self.adapter_dir)
        return d


def _code_version() -> str:
    """Package version plus git commit when run from a checkout (recorded for lineage)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _set_threads(threads: int | None) -> int:
    """One intra-op thread per core the process may use (affinity, not the host's count: containers and taskset
    often allow fewer), and one inter-op thread: a training step is a chain of large ops, not parallel branches."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    n = threads or usable
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(1)
    return n


def _sft_args(
    cfg: TailorConfig,
    run_dir: Path,
    device: str,
    dtype: Any,
    max_len: int,
    *,
    packing: bool = False,
    padding_free: bool = False,
    bf16_autocast: bool = False,
) -> Any:
    """TRL SFTConfig from our TrainConfig, with device-appropriate precision and optimizer.

    On CPU the bf16 autocast lives in our loss (TailorSFTTrainer), so the Trainer itself stays in fp32 there; on
    CUDA the Trainer's own mixed precision does it.
    """
    import torch
    from trl import SFTConfig

    t = cfg.train
    on_cuda = device == "cuda"
    optim = t.optim or ("paged_adamw_8bit" if t.method == "qlora" else "adamw_torch")
    common = trainer_args(cfg, run_dir, on_cuda=on_cuda, max_len=max_len, optim=optim)
    if padding_free and not packing:
        common["max_length"] = None  # TRL does not cut padding-free rows; build_dataset already cut them to max_len
    return SFTConfig(
        **common,
        bf16=on_cuda and (dtype == torch.bfloat16 or bf16_autocast),
        fp16=on_cuda and dtype == torch.float16 and not bf16_autocast,
        gradient_checkpointing=on_cuda and t.method in ("qlora", "full"),
        train_sampling_strategy="random",  # length buckets come from TailorSFTTrainer's sampler
        completion_only_loss=t.assistant_only_loss,
        packing=packing,
        packing_strategy="bfd",
        padding_free=packing or padding_free,
        remove_unused_columns=True,
    )


VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def _padding_free(setting: str | bool, model: Any, device: str, bf16: bool, own_attention: bool,
                  plain_sft: bool) -> tuple[bool, str]:
    """(use padding-free batches, why): only where a probe shows the examples of one row stay apart, and, under
    auto, only where the attention pays per example rather than for the whole row."""
    from llmtailor.train.attention import NAME
    from llmtailor.train.packing import isolates_packed_rows
    from llmtailor.train.trainer import attention_name

    if setting is False:
        return False, "train.padding_free is false"
    if not plain_sft:
        return False, "this objective computes its loss on padded batches"
    attention = attention_name(model)
    if own_attention and device == "cpu" and bf16:
        from llmtailor.train.attention import use_cpu_attention

        if use_cpu_attention(model):  # the trainer switches to it too; here so the probe runs the same path
            attention = NAME
    varlen = attention == NAME or attention in VARLEN_ATTENTION
    if setting == "auto" and not varlen:
        return False, f"the attention ({attention}) would attend over the whole row (auto takes varlen attention only)"
    if not isolates_packed_rows(model):
        return False, f"the attention ({attention}) lets the examples of one row attend to each other"
    return True, f"the attention ({attention}) keeps the examples of a row apart"


def train(
    cfg: TailorConfig,
    dataset_dir: Path,
    dataset_hash: str,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    callbacks: list[Any] | None = None,
    say: Any = None,
    trainer_class: Any = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune the base model on a prepared dataset version; write a run folder; return its summary.

    With `resume=True`, `run_dir` must be an interrupted run: training continues from its last
    checkpoint with the same data order (the Trainer restores RNG and sampler state).
    """
    import torch

    from llmtailor.models import choose_device, load_model
    from llmtailor.precision import choose_precision
    from llmtailor.train.adapters import peft_config
    from llmtailor.train.callbacks import MetricsLogger, RichProgress
    from llmtailor.train.dataset import build_dataset, count_tokens, load_rows
    from llmtailor.train.trainer import TailorSFTTrainer, attention_name

    t = cfg.train
    if say is None:
        from llmtailor.cli.output import console

        say = console.print if show_progress else (lambda msg: None)
    choice = choose_device(cfg.model)
    if t.method == "qlora" and choice.device != "cuda":
        raise TailorError("train.method 'qlora' needs a CUDA GPU with bitsandbytes; on CPU use method: lora")
    train_file = dataset_dir / "train.jsonl"
    if not train_file.exists():
        raise TailorError(f"{train_file}: prepared training split not found; run `tailor data prepare` first")

    checkpoint = None
    if resume:
        checkpoint = resume_checkpoint(run_dir, t.save_steps)
    else:
        run_dir = start_run(cfg, choice.device, choice.dtype, dataset_hash=dataset_hash,
                            dataset_dir=str(dataset_dir))
    assert run_dir is not None
    update_run(run_dir, status="running")

    threads = _set_threads(t.threads) if choice.device == "cpu" else None
    precision = choose_precision(
        t.precision or cfg.model.precision,
        choice.device,
        setting="train.precision" if t.precision else "model.precision",
    )
    say(f"precision {precision.name}: {precision.reason}")
    torch.manual_seed(t.seed)
    # A frozen base under bf16 autocast is stored in bf16 (half the memory, no per-step weight casts); the adapter
    # weights PEFT adds stay fp32 (its autocast_adapter_dtype). Full fine-tuning keeps fp32 master weights.
    frozen_bf16 = (
        precision.bf16 and choice.device == "cpu" and t.method in ("lora", "dora") and cfg.model.dtype == "auto"
    )
    # train.init_adapter (e.g. a continued-pretraining run): that adapter keeps training instead of a fresh one.
    init_adapter = None
    if t.init_adapter:
        from llmtailor.train.objectives import resolve_adapter

        if t.method == "full":
            raise TailorError("train.init_adapter needs an adapter method (lora, dora)")
        init_adapter, parent = resolve_adapter(cfg, t.init_adapter)
        if not resume:
            parents = [parent["run_id"]] if parent.get("run_id") else []
            update_run(run_dir, init_adapter=str(init_adapter), parents=parents)
    model, tokenizer = load_model(
        cfg.model, adapter=init_adapter, quantize_4bit=t.method == "qlora", for_training=True,
        dtype=torch.bfloat16 if frozen_bf16 else None,
    )
    if t.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    max_len = t.max_seq_len or cfg.data.max_seq_len
    rows = load_rows(train_file)
    if not rows:
        raise TailorError(f"{train_file}: the training split is empty")
    if t.rehearsal:
        from llmtailor.train.rehearsal import rehearsal_rows

        extra, summary = rehearsal_rows(
            run_dir, model, tokenizer, t.rehearsal, resume=resume, prompts_path=t.rehearsal_prompts,
            max_new_tokens=t.rehearsal_max_new_tokens, seed=t.seed, show_progress=show_progress,
        )
        if summary is not None:
            say(f"rehearsal: {summary['kept']} of {summary['asked']} general answers of the model join "
                f"{len(rows)} training rows ({summary['trimmed_to_sentence']} cut back to a whole sentence, "
                f"{summary['dropped_cut_off']} without one dropped; budget "
                f"{summary['max_new_tokens']} tokens)")
            update_run(run_dir, rehearsal=summary)
        rows = rows + extra
    dataset = build_dataset(rows, tokenizer, max_len, t.assistant_only_loss)
    tokens_per_epoch = count_tokens(dataset)

    packing, batching = False, "random order"
    if t.packing:
        from llmtailor.train.packing import isolates_packed_rows

        if isolates_packed_rows(model):
            packing, batching = True, "packed (best-fit decreasing; attention kept apart per row)"
        else:
            batching = (
                "length buckets: packing asked for, but this model's attention implementation "
                f"({getattr(model.config, '_attn_implementation', '?')}) lets packed rows attend to each "
                "other, so rows are batched by length instead"
            )
            say(f"[yellow]{batching}[/]")
    bucket = not packing and (t.group_by_length or t.packing)
    if bucket and not t.packing:
        batching = "length buckets"
    padding_free, why = False, None
    if not packing:
        padding_free, why = _padding_free(t.padding_free, model, choice.device, precision.bf16,
                                          t.attention == "auto", trainer_class is None)
        if padding_free:
            batching += ", padding-free (each batch one row, its examples kept apart by the attention)"
        elif t.padding_free is True:
            say(f"[yellow]padding-free batches asked for, but {why}: batches are padded[/]")

    all_callbacks: list[Any] = [MetricsLogger(run_dir / "metrics.jsonl"), *(callbacks or [])]
    if show_progress:
        all_callbacks.append(RichProgress())
    # transformers' own renames (gradient_checkpointing -> activation_checkpointing) warn from inside TRL; they are
    # notices for library authors, not for someone training a model.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    # trainer_class: a TailorSFTTrainer subclass with another loss (distillation's KL to a teacher).
    trainer = (trainer_class or TailorSFTTrainer)(
        model=model,
        args=_sft_args(
            cfg, run_dir, choice.device, choice.dtype, max_len, packing=packing, padding_free=padding_free,
            bf16_autocast=precision.bf16,
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if init_adapter is not None else peft_config(t),
        callbacks=all_callbacks,
        autocast_bf16=precision.bf16 and choice.device == "cpu",
        cpu_attention=t.attention == "auto" and choice.device == "cpu",
        buckets=bucket,
        **(trainer_kwargs or {}),
    )
    planned_padding = None
    if bucket:
        from llmtailor.train.trainer import padding_share

        planned_padding = padding_share(trainer.row_lengths(), trainer.bucket_sampler().batches())
    update_run(
        run_dir,
        **precision.as_dict(),
        base_weights="bf16" if frozen_bf16 else "as loaded",
        threads=threads,
        cpu_memory=cpu_memory_state() or None,
        batching=batching,
        packing=packing,
        padding_free=padding_free,
        padding_free_reason=why,
        label_only_loss=trainer.label_only,
        attention=attention_name(trainer.model),
    )
    # The Trainer prints log dicts on stdout when tqdm is off; stdout is reserved for --json output.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    start_epoch = 0.0
    if checkpoint is not None:
        start_epoch = begin(run_dir, checkpoint)
    output, runtime = run_trainer(
        run_dir, lambda: trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    )

    out_dir = run_dir / ("model" if t.method == "full" else "adapter")
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    write_json(
        out_dir / "llmtailor.json",
        {
            "base_model": cfg.model.base_model,
            "method": t.method,
            "dataset_hash": dataset_hash,
            "run_id": run_dir.name,
            "max_seq_len": max_len,
        },
    )
    counts = trainer.token_counts
    measured_padding = 1.0 - counts["real"] / counts["positions"] if counts["positions"] else None
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    final_loss = float(losses[-1]) if losses else None
    epochs_done = float(trainer.state.epoch or 0.0) - start_epoch
    tokens_per_s = tokens_per_epoch * epochs_done / runtime if runtime > 0 else 0.0
    update_run(
        run_dir,
        status="completed",
        steps=int(trainer.state.global_step),
        final_loss=final_loss,
        first_loss=float(losses[0]) if losses else None,
        train_loss=float(output.training_loss),
        train_runtime_s=round(runtime + float(read_run(run_dir).get("train_runtime_s") or 0.0) * bool(checkpoint), 2),
        train_tokens_per_s=round(tokens_per_s, 1),
        train_rows=len(rows),
        tokens_per_epoch=tokens_per_epoch,
        padding_share=round(measured_padding, 4) if measured_padding is not None else None,
        padding_share_planned=round(planned_padding, 4) if planned_padding is not None else None,
        adapter_dir=str(out_dir),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return TrainResult(run_dir, out_dir, final_loss, int(trainer.state.global_step), runtime, tokens_per_s)
