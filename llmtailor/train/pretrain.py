"""Continued pretraining on raw domain text: documents packed into fixed-length blocks, loss on every token.

Files are read with the RAG loaders (txt, md, html, pdf, docx), so a folder `tailor rag ingest` takes can also
teach the model its vocabulary and style. Documents are joined with the end-of-text token and cut into
`pretrain.block_size` token blocks: a long document spans several blocks, short ones share a block. Training itself
is TRL's SFTTrainer (via llmtailor's TailorSFTTrainer: label-only head, bf16 autocast on CPU), with every token
labelled. The adapter it writes is an ordinary run adapter: `train.init_adapter` starts SFT from it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import TailorError
from llmtailor.io import stable_hash
from llmtailor.runs import update_run
from llmtailor.train import resume as resuming
from llmtailor.train.objectives import (
    loss_summary,
    quiet_trainer,
    resolve_adapter,
    run_trainer,
    save_outputs,
    start_run,
)
from llmtailor.train.sft import TrainResult, _set_threads

if TYPE_CHECKING:
    from llmtailor.config import TailorConfig


@dataclass
class TextDoc:
    """One source file's text."""

    path: Path
    text: str


def find_files(sources: list[Path]) -> list[Path]:
    """Files named, and the readable files inside folders named (sorted, hidden files skipped)."""
    from llmtailor.rag.loaders import SUPPORTED

    if not sources:
        raise TailorError("pretrain.sources: no text files configured (list files or folders of txt/md/html/pdf/"
                          "docx)")
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            found = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED
                           and not any(part.startswith(".") for part in p.relative_to(src).parts))
            if not found:
                raise TailorError(f"{src}: no readable files ({', '.join(sorted(SUPPORTED))}) in this folder")
            files.extend(found)
        elif src.is_file():
            if src.suffix.lower() not in SUPPORTED:
                raise TailorError(f"{src}: unsupported file type '{src.suffix or '(none)'}' for pretraining "
                                  f"(supported: {', '.join(sorted(SUPPORTED))})")
            files.append(src)
        else:
            raise TailorError(f"{src}: pretrain.sources entry not found")
    return files


def source_paths(cfg: TailorConfig) -> list[Path]:
    """`pretrain.sources` made absolute against tailor.yaml's folder (the config loader leaves list items alone)."""
    return [s if s.is_absolute() else cfg.base_dir / s for s in cfg.pretrain.sources]


def read_documents(sources: list[Path], min_chars: int = 1) -> list[TextDoc]:
    """Every file's text; an empty, binary or unreadable file stops with its name (no silent skipping: a
    corpus missing a file trains a different model than the one asked for)."""
    from llmtailor.rag.loaders import SkipFile, parse_bytes

    docs = []
    for path in find_files(sources):
        try:
            parsed = parse_bytes(path.read_bytes(), path)
        except SkipFile as e:
            raise TailorError(f"{path}: {e}") from None
        text = parsed.text[parsed.body_start:].strip()
        if len(text) < min_chars:
            raise TailorError(f"{path}: {'empty file' if not text else f'only {len(text)} characters'} (no text to "
                              "pretrain on; remove it from pretrain.sources)")
        docs.append(TextDoc(path, text))
    return docs


def pack_blocks(docs: list[TextDoc], tokenizer: Any, block_size: int) -> list[list[int]]:
    """Token blocks of `block_size` over the documents joined by the end-of-text token; the remainder is a last,
    shorter block rather than dropped (a small corpus must not lose its tail)."""
    sep = tokenizer.eos_token_id
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(sep)
    blocks = [stream[i:i + block_size] for i in range(0, len(stream), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < 2:
        blocks.pop()  # one token predicts nothing
    return blocks


def _resume_adapter(run_dir: Path, info: dict[str, Any]) -> Path | None:
    """The adapter the interrupted run started from (recorded in run.json), which must still be there."""
    parent_dir = Path(info["init_adapter"]) if info.get("init_adapter") else None
    if parent_dir is not None and not (parent_dir / "adapter_config.json").exists():
        raise TailorError(f"{run_dir}: its starting adapter {parent_dir} is gone; restore it to resume, or start a "
                          "new run without --resume")
    return parent_dir


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
    """Continued pretraining on `pretrain.sources`; `dataset_dir` (optional) is the chat dataset whose held-out split
    `tailor eval` scores the result on."""
    import torch
    from datasets import Dataset

    from llmtailor.models import choose_device, load_model
    from llmtailor.precision import choose_precision
    from llmtailor.train.adapters import peft_config
    from llmtailor.train.callbacks import MetricsLogger, RichProgress
    from llmtailor.train.sft import _sft_args
    from llmtailor.train.trainer import TailorSFTTrainer, attention_name

    t, p = cfg.train, cfg.pretrain
    if say is None:
        from llmtailor.cli.output import console

        say = console.print if show_progress else (lambda msg: None)
    choice = choose_device(cfg.model)
    if t.method == "qlora" and choice.device != "cuda":
        raise TailorError("train.method 'qlora' needs a CUDA GPU with bitsandbytes; on CPU use method: lora")
    checkpoint, info = None, {}
    if resume:
        # The saved config's relative sources would resolve against the run folder: the files come from run.json.
        run_dir, info, checkpoint = resuming.open_resume(run_dir, t.objective, t.save_steps)
        docs = read_documents([Path(f) for f in info.get("corpus_files") or []] or source_paths(cfg), p.min_chars)
        parent_dir, parent = _resume_adapter(run_dir, info), {}
    else:
        docs = read_documents(source_paths(cfg), p.min_chars)
        parent_dir, parent = (resolve_adapter(cfg, t.init_adapter) if t.init_adapter else (None, {}))
    if parent_dir is not None and t.method == "full":
        raise TailorError("train.init_adapter needs an adapter method (lora, dora)")
    precision = choose_precision(t.precision or cfg.model.precision, choice.device,
                                 setting="train.precision" if t.precision else "model.precision")
    say(f"precision {precision.name}: {precision.reason}")
    torch.manual_seed(t.seed)
    model, tokenizer = load_model(cfg.model, adapter=parent_dir, for_training=True, quantize_4bit=t.method == "qlora")
    blocks = pack_blocks(docs, tokenizer, p.block_size)
    tokens = sum(len(b) for b in blocks)
    corpus = stable_hash([[str(d.path), stable_hash(d.text)] for d in docs])
    if checkpoint is not None:
        assert run_dir is not None
        if (corpus, len(blocks), tokens) != (info.get("corpus_hash"), info.get("blocks"), info.get("corpus_tokens")):
            raise TailorError(f"{run_dir}: the pretraining text changed since this run started (corpus "
                              f"{info.get('corpus_hash')}, {info.get('blocks')} blocks; now {corpus}, {len(blocks)} "
                              "blocks), so the resumed steps would train on other blocks; restore the files to "
                              "resume, or start a new run without --resume")
    else:
        run_dir = start_run(
            cfg, choice.device, choice.dtype, dataset_hash=dataset_hash,
            dataset_dir=str(dataset_dir) if dataset_dir else None, corpus_hash=corpus,
            corpus_files=[str(d.path) for d in docs], corpus_tokens=tokens, blocks=len(blocks),
            block_size=p.block_size, init_adapter=str(parent_dir) if parent_dir else None,
            parents=[parent["run_id"]] if parent.get("run_id") else [], **precision.as_dict(),
        )
    threads = _set_threads(t.threads) if choice.device == "cpu" else None
    say(f"pretraining on {len(docs)} file(s): {tokens} tokens in {len(blocks)} blocks of up to {p.block_size}")
    dataset = Dataset.from_list([{"input_ids": b} for b in blocks])
    # Before the Trainer arguments: building them warns about transformers' own renames (gradient_checkpointing),
    # a notice for library authors, not for someone training a model.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    args = _sft_args(cfg, run_dir, choice.device, choice.dtype, p.block_size, bf16_autocast=precision.bf16)
    args.completion_only_loss = False  # every token is a target
    args.assistant_only_loss = False
    all_callbacks: list[Any] = [MetricsLogger(run_dir / "metrics.jsonl"), *(callbacks or [])]
    if show_progress:
        all_callbacks.append(RichProgress())
    trainer = TailorSFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=None if parent_dir is not None else peft_config(t), callbacks=all_callbacks,
        autocast_bf16=precision.bf16 and choice.device == "cpu", buckets=t.group_by_length,
        cpu_attention=t.attention == "auto" and choice.device == "cpu",
    )
    quiet_trainer(trainer)
    update_run(run_dir, threads=threads, label_only_loss=trainer.label_only, attention=attention_name(trainer.model))
    start_epoch = resuming.begin(run_dir, checkpoint) if checkpoint is not None else 0.0
    _, runtime = run_trainer(
        run_dir, lambda: trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    )
    out_dir = save_outputs(cfg, run_dir, trainer.model, tokenizer, dataset_hash, p.block_size,
                           {"corpus_hash": corpus, "init_adapter": str(parent_dir) if parent_dir else None})
    losses = loss_summary(trainer.state.log_history)
    epochs = float(trainer.state.epoch or 0.0) - start_epoch
    tps = tokens * epochs / runtime if runtime > 0 else 0.0
    update_run(run_dir, status="completed", steps=int(trainer.state.global_step), **losses,
               train_runtime_s=resuming.total_runtime(run_dir, runtime) if checkpoint else round(runtime, 2),
               train_tokens_per_s=round(tps, 1), adapter_dir=str(out_dir),
               finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return TrainResult(run_dir, out_dir, losses["final_loss"], int(trainer.state.global_step), runtime, tps)
