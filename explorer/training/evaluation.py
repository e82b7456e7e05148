"""Evaluation: logits in inference mode, and the per-epoch metrics a trained model gets from them.

`epoch_scores` turns the val and test logits of one model (or of each fused member, explorer/training/fused.py)
into the metrics every epoch reports: accuracy and CE loss per split, agreement with the teacher, the
class counts of the training split as used, and the accuracy on classes it lacks (seed 003 section 4.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def autocast(device: torch.device):
    """bf16 autocast on GPU, nothing on CPU (CPU bf16 is slower than fp32 on most hosts)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Logits for every row of x, in eval mode and inference mode, as float32."""
    was_training = model.training
    model.eval()
    with autocast(x.device):
        out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float, Tensor]:
    """(accuracy, mean CE loss, predictions) of `model` on (x, y)."""
    logits = predict_logits(model, x)
    preds = logits.argmax(1)
    return (preds == y).float().mean().item(), F.cross_entropy(logits, y).item(), preds


class TeacherEnsemble(nn.Module):
    """Several teachers evaluated as one: logits = log of the mean of their softmax probabilities
    (for accuracy and agreement). The loss sees each teacher's own logits (a list)."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(teachers)

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def epoch_scores(splits, val_logits: Tensor, test_logits: Tensor, teacher_preds: dict[str, Tensor] | None) -> dict:
    """One model's metrics from its val and test logits. `teacher_preds`: the frozen teacher's
    predictions by split ("val", and "test" when classes are omitted), None without a teacher."""
    s = splits
    out, preds = {}, {}
    for split, logits, y in (("val", val_logits, s.val_y), ("test", test_logits, s.test_y)):
        preds[split] = logits.argmax(1)
        out[f"{split}_acc"] = (preds[split] == y).float().mean().item()
        out[f"{split}_loss"] = F.cross_entropy(logits, y).item()
    if teacher_preds is not None:
        out["kd_agreement"] = (preds["val"] == teacher_preds["val"]).float().mean().item()
    # The training split as used: its class counts before label noise (the imbalance actually applied),
    # and the classes it lacks (omit_classes), with the accuracy on their val/test samples, the model's
    # and (a clean teacher saw them) its teacher's: `<split>_acc_omitted`, `teacher_<split>_acc_omitted`.
    counts = torch.bincount(s.train_clean_y, minlength=s.num_classes)
    out |= {"class_count_max": int(counts.max()), "class_count_min": int(counts[counts > 0].min())}
    absent = absent_classes(s)
    if len(absent):
        for split, y in (("val", s.val_y), ("test", s.test_y)):
            mask = torch.isin(y, absent)
            if mask.any():
                out[f"{split}_acc_omitted"] = (preds[split][mask] == y[mask]).float().mean().item()
                if teacher_preds is not None and split in teacher_preds:
                    out[f"teacher_{split}_acc_omitted"] = (teacher_preds[split][mask] == y[mask]).float().mean().item()
    return out


def absent_classes(splits) -> Tensor:
    """The classes the training split lacks (omit_classes)."""
    return torch.nonzero(torch.bincount(splits.train_y, minlength=splits.num_classes) == 0).flatten()
