"""Logit distillation: the student matches the teacher's softened token distribution, not only its sampled tokens.

loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, teacher's tokens), over the
assistant (label) positions only, as in Hinton et al. (2015); T^2 keeps the KL gradient on the scale of the CE one
as T grows. Both models must share a tokenizer, since the distributions are compared token id by token id.
Only label positions go through the LM heads, as in llmtailor's label-only loss.
"""

from __future__ import annotations

from typing import Any

from llmtailor.train.loss import label_logits
from llmtailor.train.trainer import TailorSFTTrainer


def kd_loss(student_logits: Any, teacher_logits: Any, targets: Any, *, temperature: float, alpha: float,
            denom: Any = None) -> tuple[Any, Any, Any]:
    """(loss, kl, ce) for logits of shape (n_label_tokens, vocab); sums are divided by `denom` (default n)."""
    import torch
    import torch.nn.functional as F

    n = targets.numel()
    denom = torch.as_tensor(denom if denom is not None else n, device=student_logits.device).clamp(min=1)
    ce = F.cross_entropy(student_logits, targets, reduction="sum") / denom
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum") / denom
    return alpha * t * t * kl + (1.0 - alpha) * ce, kl, ce


class DistillTrainer(TailorSFTTrainer):
    """TailorSFTTrainer whose loss adds the KL to a frozen teacher's distribution at the same label positions."""

    def __init__(self, *args: Any, teacher: Any, kd_temperature: float, kd_alpha: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.kd_temperature, self.kd_alpha = kd_temperature, kd_alpha

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        import torch

        student, targets = label_logits(model, inputs, autocast_bf16=self.autocast_bf16)
        with torch.no_grad():
            teacher, _ = label_logits(self.teacher, inputs)
        loss, kl, ce = kd_loss(student, teacher, targets, temperature=self.kd_temperature, alpha=self.kd_alpha,
                               denom=num_items_in_batch)
        mode = "train" if model.training else "eval"
        metrics = self._metrics[mode]
        metrics["kl"].append(float(kl.detach()))
        metrics["ce"].append(float(ce.detach()))
        if targets.numel():
            metrics["mean_token_accuracy"].append(float((student.argmax(-1) == targets).float().mean()))
        return (loss, None) if return_outputs else loss
