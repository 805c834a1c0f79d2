"""Knowledge distillation from a teacher detector's outputs, outside both models.

Output-level distillation after "Object detection at 200 Frames Per Second" (Mehta & Ozay 2019,
arXiv:1906.11172), the same for every head (YOLOv5 and the YOLOv3 family: ``na`` anchors per cell;
YOLOX's decoupled head: one prior per cell, its ``reg``, ``obj`` and ``cls`` outputs):

- objectness, on every prior: the Bernoulli KL divergence ``KL(σ(t) ‖ σ(s))`` (a BCE against the
  teacher's probability minus the teacher's own entropy: the BCE's gradient, and exactly 0 when the
  student agrees), averaged over all priors as YOLOv5's loss averages its objectness; YOLOX's
  divides its sums by the number of matched priors, so there the sum is divided by the teacher's
  objectness mass ``Σ σ(t_obj)`` instead, and one ``--distill-weight`` suits both;
- classes, per prior the KL of each class averaged over the classes, and boxes, the squared error
  of the box outputs in the head's own units (summed over ``x, y, w, h``), both weighted by the
  teacher's objectness ``σ(t_obj)``, so that the many background priors whose boxes and classes mean
  nothing do not drown the few that matter.

The box units come from the decode style (:func:`yoloslim.models.decode.decode_style`): YOLOv5's
``σ(t)`` for all four, darknet's ``σ(t_xy)`` and ``t_wh = log(wh / anchor)``, YOLOX's ``t_xy``
(offsets in strides) and ``t_wh = log(wh / stride)``.

The teacher runs in eval mode under ``no_grad``, on the student's input. With ``detection`` off
(label-free training on unlabelled images) the distillation is the whole loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from yoloslim.loss.yolov3 import MAX_LOG_WH
from yoloslim.models.decode import decode_style
from yoloslim.models.io import unwrap


@dataclass
class HeadOutputs:
    """A head's raw maps, one row per prior of every level.

    Attributes:
        box: (b, A, 4) box outputs in the head's units.
        obj: (b, A) objectness logits.
        cls: (b, A, nc) class logits.
    """

    box: torch.Tensor
    obj: torch.Tensor
    cls: torch.Tensor


def head_outputs(raw: list[torch.Tensor], na: int, nc: int, style: str) -> HeadOutputs:
    """Split raw maps ``[(b, na·(5+nc), h, w)]`` into box, objectness and class rows (float32)."""
    rows = []
    for p in raw:
        b, _, h, w = p.shape
        rows.append(p.float().view(b, na, 5 + nc, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, 5 + nc))
    y = torch.cat(rows, 1)  # (b, A, 5 + nc)
    t = y[..., :4]
    if style == "yolov5":
        box = t.sigmoid()
    elif style == "darknet":
        box = torch.cat((t[..., :2].sigmoid(), t[..., 2:].clamp(max=MAX_LOG_WH)), -1)
    else:  # anchor_free
        box = t
    return HeadOutputs(box, y[..., 4], y[..., 5:])


def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(σ(t) ‖ σ(s))`` ≥ 0, zero where the logits agree."""
    p = teacher_logits.sigmoid()
    log_pos = F.logsigmoid(teacher_logits) - F.logsigmoid(student_logits)  # log p - log q
    log_neg = F.logsigmoid(-teacher_logits) - F.logsigmoid(-student_logits)  # log (1-p) - log (1-q)
    return (p * log_pos + (1 - p) * log_neg).clamp(min=0)


def output_distance(student: HeadOutputs, teacher: HeadOutputs,
                    obj_per_object: bool = False) -> dict[str, torch.Tensor]:
    """The three distillation terms: ``{"obj", "box", "cls"}``.

    Args:
        student: the student's outputs.
        teacher: the teacher's outputs on the same input.
        obj_per_object: divide the objectness term's sum by the teacher's objectness mass ``Σ σ(t_obj)``
            (YOLOX's loss divides by its number of matched priors) instead of averaging it over the
            priors (YOLOv5's), so that the distillation keeps the detection loss's scale.
    """
    w = teacher.obj.sigmoid()  # (b, A) the teacher's objectness weighs box and class terms
    norm = w.sum().clamp(min=1e-6)
    kl_obj = bernoulli_kl(teacher.obj, student.obj)  # (b, A)
    obj = kl_obj.sum() / norm.clamp(min=1.0) if obj_per_object else kl_obj.mean()
    box = (w * (student.box - teacher.box).pow(2).sum(-1)).sum() / norm
    cls = (w * bernoulli_kl(teacher.cls, student.cls).mean(-1)).sum() / norm if student.cls.shape[-1] else obj * 0
    return {"obj": obj, "box": box, "cls": cls}


class DistillLoss:
    """``distill(student_raw, x) -> (weight · distance × batch size, {"distill": distance})``.

    Args:
        teacher: the teacher detector (same family, classes, strides, anchors and input convention
            as the student: :func:`yoloslim.engine.distill_setup.check_teacher`); put in eval mode,
            its parameters frozen.
        weight: the distillation loss's weight against the detection loss.
        detection: also compute the detection loss on the labels (False: label-free training).
    """

    def __init__(self, teacher: nn.Module, weight: float, detection: bool = True) -> None:
        self.teacher = unwrap(teacher).eval().requires_grad_(False)
        spec = self.teacher.spec
        self.na, self.nc, self.style = spec.num_anchors, spec.nc, decode_style(spec)
        self.weight = float(weight)
        self.detection = detection

    def outputs(self, raw: list[torch.Tensor]) -> HeadOutputs:
        """Raw maps of the student or the teacher as :class:`HeadOutputs`."""
        return head_outputs(raw, self.na, self.nc, self.style)

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> HeadOutputs:
        """The teacher's outputs on model input ``x`` (b, 3, S, S), in eval mode, without gradients."""
        self.teacher.eval()
        return self.outputs(self.teacher(x))

    def distance(self, student_raw: list[torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distillation terms of the student's raw maps against the teacher's on ``x``."""
        return output_distance(self.outputs(student_raw), self.teacher_outputs(x),
                               obj_per_object=self.style == "anchor_free")

    def __call__(self, student_raw: list[torch.Tensor],
                 x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.distance(student_raw, x)
        total = terms["obj"] + terms["box"] + terms["cls"]
        return self.weight * total * x.shape[0], {"distill": total.detach()}

    def combine(self, student_raw: list[torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss: detection loss on ``targets`` (unless label-free) plus the distillation."""
        loss, items = self(student_raw, x)
        if not self.detection:
            return loss, items
        det, det_items = loss_fn(student_raw, targets)
        return det + loss, {**det_items, **items}
