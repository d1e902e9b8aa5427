"""TRL's SFTTrainer with the CPU-speed parts llmtailor adds: label-only loss, bf16 autocast, length buckets.

Everything else (optimizer, schedule, checkpoints, resume, accelerate/FSDP/DeepSpeed) stays TRL's and
transformers'. Under several processes the label-only path steps aside for TRL's own fused head, because calling
the backbone directly would bypass the DDP wrapper's gradient hooks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler
from trl import SFTTrainer

from llmtailor.train.loss import backbone_and_head, base_model_of, label_only_loss


class BucketSampler(Sampler[int]):
    """Length buckets with the least padding: rows sorted by length, cut into batches, full batches shuffled.

    The order depends only on (seed, epoch), so a resumed run replays the same batches. Ties in length are broken
    at random each epoch, so rows of equal length still meet different neighbours.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        """This epoch's batches of row indices."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        keys = [rng.random() for _ in self.lengths]
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], keys[i]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # The DataLoader cuts the index stream every batch_size rows, so a short batch may only come last.
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        rng.shuffle(batches)
        return batches + tail

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.lengths)


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of padded positions when each batch is padded to its longest row."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1.0 - real / padded if padded else 0.0


def attention_name(model: Any) -> str:
    """The attention implementation the model runs with (for run.json)."""
    inner = base_model_of(model)
    return str(getattr(inner.config, "_attn_implementation", None) or "unknown")


class TailorSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss projects only label positions and runs the forward under bf16 autocast on CPU."""

    def __init__(self, *args: Any, label_only: bool = True, autocast_bf16: bool = False, buckets: bool = False,
                 cpu_attention: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.label_only = label_only and backbone_and_head(self.model) is not None
        self.autocast_bf16 = autocast_bf16
        if autocast_bf16:
            from llmtailor.train.lora_fp32 import keep_adapters_fp32

            keep_adapters_fp32(self.model)
        self.cpu_attention = False
        if cpu_attention and autocast_bf16:
            from llmtailor.train.attention import use_cpu_attention

            self.cpu_attention = use_cpu_attention(self.model)
        self.buckets = buckets
        self.token_counts = {"real": 0, "positions": 0}

    def row_lengths(self) -> list[int]:
        """Token count of each row of the dataset TRL actually trains on (after its own filtering and truncation)."""
        return [len(ids) for ids in self.train_dataset["input_ids"]]

    def bucket_sampler(self) -> BucketSampler:
        return BucketSampler(self.row_lengths(), self.args.per_device_train_batch_size, self.args.seed)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.buckets:
            return self.bucket_sampler()
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if not self.label_only or return_outputs or self.accelerator.num_processes > 1:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        mode = "train" if model.training else "eval"
        out = label_only_loss(model, inputs, num_items_in_batch, autocast_bf16=self.autocast_bf16)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            out.loss = out.loss * self.accelerator.num_processes
        metrics = self._metrics[mode]
        if out.label_tokens:
            metrics["mean_token_accuracy"].append(out.correct / out.label_tokens)
        if mode == "train":
            ids = inputs["input_ids"]
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(ids.numel())
            self.token_counts["real"] += real
            self.token_counts["positions"] += int(ids.numel())
            self._total_train_tokens += real
            metrics["num_tokens"] = [self._total_train_tokens]
        return out.loss
