"""Knowledge distillation from a teacher detector's outputs, outside both models.

Output-level distillation after "Object detection at 200 Frames Per Second" (Mehta & Ozay 2019,
arXiv:1906.11172), the same for every head with objectness (YOLOv5 and the YOLOv3 family: ``na`` anchors per cell;
YOLOX's decoupled head: one prior per cell, its ``reg``, ``obj`` and ``cls`` outputs):

- objectness, on every prior: the Bernoulli KL divergence ``KL(σ(t) ‖ σ(s))`` (a BCE against the
  teacher's probability minus the teacher's own entropy: the BCE's gradient, and exactly 0 when the
  student agrees), averaged over all priors as YOLOv5's loss averages its objectness; YOLOX's
  divides its sums by the number of matched priors, so there the sum is divided by the teacher's
  objectness mass ``Σ σ(t_obj)`` instead, and one ``--distill-weight`` suits both. YOLOX trained on
  labels leaves this term out (:data:`NO_OBJECTNESS_WITH_LABELS`): its objectness shares the
  regression tower, and distilling it set the box regression back (docs/BENCHMARKS.md, "Session
  13"); label-free, with no other objectness signal, it stays;
- classes, per prior the KL of each class averaged over the classes, and boxes, the squared error
  of the box outputs in the head's own units (summed over ``x, y, w, h``), both weighted by the
  teacher's objectness ``σ(t_obj)``, so that the many background priors whose boxes and classes mean
  nothing do not drown the few that matter.

The box units come from the decode style (:func:`yoloslim.models.decode.decode_style`): YOLOv5's
``σ(t)`` for all four, darknet's ``σ(t_xy)`` and ``t_wh = log(wh / anchor)``, YOLOX's ``t_xy``
(offsets in strides) and ``t_wh = log(wh / stride)``.

The DFL head of YOLOv8 / YOLO11 (decode style ``"dfl"``: no objectness, per side a distribution
over ``reg_max`` distance bins, :mod:`yoloslim.loss.yolov8`) is distilled in its own terms:

- classes, on every prior: the Bernoulli KL of each class summed over the classes (the detection
  loss sums its class BCE over every prior and class), divided by the teacher's confidence mass
  ``Σ w``, ``w = max_c σ(t_cls)`` per prior (the detection loss divides by its target-score mass);
- boxes: localization distillation (Zheng et al. 2022, "Localization Distillation for Dense Object
  Detection", arXiv:2102.12252): per side the KL between the teacher's and the student's bin
  distributions softened by the temperature ``T = 10``, times ``T²``, averaged over the four sides
  and weighted by ``w`` (summed, / ``Σ w``), with LD's weight 0.25.

The teacher runs in eval mode under ``no_grad``, on the student's input. With ``detection`` off
(label-free training on unlabelled images) the distillation is the whole loss.

Optionally the features the head reads are imitated too (``feature_weight``; channel-wise distillation
through trained adapters, :mod:`yoloslim.loss.feature_distill`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from yoloslim.errors import UserError
from yoloslim.loss.feature_distill import FeatureImitation, FeatureTap, head_feature_convs
from yoloslim.loss.yolov3 import MAX_LOG_WH
from yoloslim.loss.yolov8 import reg_max_of, split_maps
from yoloslim.models.decode import decode_style
from yoloslim.models.io import unwrap

LD_TEMPERATURE = 10.0  # localization distillation's temperature and weight (arXiv:2102.12252)
LD_WEIGHT = 0.25
# decode styles whose objectness is not distilled when the detection loss trains on labels: YOLOX-s
# (27 % cut, 30 epochs) reached 0.669 mAP@.5:.95 with it, 0.716 without, 0.733 without distillation
NO_OBJECTNESS_WITH_LABELS = ("anchor_free",)


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


def output_distance(student: HeadOutputs, teacher: HeadOutputs, obj_per_object: bool = False,
                    objectness: bool = True) -> dict[str, torch.Tensor]:
    """The distillation terms: ``{"obj", "box", "cls"}`` (without ``"obj"`` when ``objectness`` is off).

    Args:
        student: the student's outputs.
        teacher: the teacher's outputs on the same input.
        obj_per_object: divide the objectness term's sum by the teacher's objectness mass ``Σ σ(t_obj)``
            (YOLOX's loss divides by its number of matched priors) instead of averaging it over the
            priors (YOLOv5's), so that the distillation keeps the detection loss's scale.
        objectness: include the objectness term (the teacher's objectness still weighs the others).
    """
    w = teacher.obj.sigmoid()  # (b, A) the teacher's objectness weighs box and class terms
    norm = w.sum().clamp(min=1e-6)
    box = (w * (student.box - teacher.box).pow(2).sum(-1)).sum() / norm
    cls = (w * bernoulli_kl(teacher.cls, student.cls).mean(-1)).sum() / norm if student.cls.shape[-1] else box * 0
    if not objectness:
        return {"box": box, "cls": cls}
    kl_obj = bernoulli_kl(teacher.obj, student.obj)  # (b, A)
    obj = kl_obj.sum() / norm.clamp(min=1.0) if obj_per_object else kl_obj.mean()
    return {"obj": obj, "box": box, "cls": cls}


@dataclass
class DFLOutputs:
    """A DFL head's raw maps, one row per prior of every level.

    Attributes:
        dist: (b, A, 4, reg_max) logits of the ``l, t, r, b`` distance bins.
        cls: (b, A, nc) class logits.
    """

    dist: torch.Tensor
    cls: torch.Tensor


def dfl_distance(student: DFLOutputs, teacher: DFLOutputs) -> dict[str, torch.Tensor]:
    """The DFL head's distillation terms: ``{"box", "cls"}`` (see the module docstring)."""
    t_prob = teacher.cls.sigmoid()
    w = t_prob.amax(-1) if t_prob.shape[-1] else t_prob.new_zeros(t_prob.shape[:-1])  # (b, A) teacher confidence
    norm = w.sum().clamp(min=1.0)
    cls = bernoulli_kl(teacher.cls, student.cls).sum() / norm
    temp = LD_TEMPERATURE
    t_log = F.log_softmax(teacher.dist / temp, -1)
    s_log = F.log_softmax(student.dist / temp, -1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1).clamp(min=0).mean(-1)  # (b, A) mean over the four sides
    box = LD_WEIGHT * temp**2 * (w * kl).sum() / norm
    return {"box": box, "cls": cls}


class DistillLoss:
    """``distill(student_raw, x) -> ((weight · distance + feature_weight · imitation) × batch size, items)``.

    ``items`` holds ``"distill"`` (the output distance) and, with feature imitation, ``"feat"``.

    Args:
        teacher: the teacher detector (same family, classes, strides, anchors and input convention
            as the student: :func:`yoloslim.engine.distill_setup.check_teacher`); put in eval mode,
            its parameters frozen.
        weight: the distillation loss's weight against the detection loss.
        detection: also compute the detection loss on the labels (False: label-free training).
        student: the bare student model, whose head features are imitated when ``feature_weight`` > 0.
        feature_weight: weight of the feature imitation (0: none). Its adapters (``imitation``) train
            with the student: give their parameters to the optimizer.
        probe_size: image size of the forward pass that finds the features.
    """

    def __init__(self, teacher: nn.Module, weight: float, detection: bool = True, student: nn.Module | None = None,
                 feature_weight: float = 0.0, probe_size: int = 64) -> None:
        self.teacher = unwrap(teacher).eval().requires_grad_(False)
        spec = self.teacher.spec
        self.na, self.nc, self.style = spec.num_anchors, spec.nc, decode_style(spec)
        self.reg_max = reg_max_of(self.teacher) if self.style == "dfl" else 0
        self.weight = float(weight)
        self.detection = detection
        self.feature_weight = float(feature_weight)
        self.imitation: FeatureImitation | None = None
        if self.feature_weight:
            if student is None:
                raise ValueError("feature imitation needs the student model")
            positions = head_feature_convs(student, probe_size)
            self.student_tap, self.teacher_tap = FeatureTap(student, positions), FeatureTap(self.teacher, positions)
            self.imitation = FeatureImitation([c.in_channels for c in self.student_tap.convs],
                                              [c.in_channels for c in self.teacher_tap.convs])
            self.imitation.to(next(unwrap(student).parameters()).device)

    def outputs(self, raw: list[torch.Tensor]) -> HeadOutputs | DFLOutputs:
        """Raw maps of the student or the teacher as :class:`HeadOutputs` (:class:`DFLOutputs` for a DFL head)."""
        if self.style == "dfl":
            return DFLOutputs(*split_maps(raw, self.reg_max))
        return head_outputs(raw, self.na, self.nc, self.style)

    @torch.no_grad()
    def teacher_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's raw maps on model input ``x`` (b, 3, S, S), in eval mode, without gradients."""
        self.teacher.eval()
        return self.teacher(x)

    def teacher_outputs(self, x: torch.Tensor) -> HeadOutputs | DFLOutputs:
        """The teacher's outputs on model input ``x``."""
        return self.outputs(self.teacher_raw(x))

    def distance(self, student_raw: list[torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distillation terms of the student's raw maps against the teacher's on ``x``."""
        teacher_raw = self.teacher_raw(x)
        shapes = [tuple(p.shape) for p in student_raw], [tuple(p.shape) for p in teacher_raw]
        if shapes[0] != shapes[1]:
            raise UserError(f"--teacher: its head's outputs {shapes[1]} differ from the student's {shapes[0]}; "
                            "the teacher must have the same head (classes, anchors, DFL bins)")
        student, teacher = self.outputs(student_raw), self.outputs(teacher_raw)
        if self.style == "dfl":
            return dfl_distance(student, teacher)
        objectness = not (self.detection and self.style in NO_OBJECTNESS_WITH_LABELS)
        return output_distance(student, teacher, obj_per_object=self.style == "anchor_free", objectness=objectness)

    def __call__(self, student_raw: list[torch.Tensor],
                 x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.distance(student_raw, x)  # runs the teacher: its tap now holds its features
        total = sum(terms.values())
        loss, items = self.weight * total, {"distill": total.detach()}
        if self.imitation is not None:
            feat = self.imitation(self.student_tap.features(), self.teacher_tap.features())
            self.student_tap.clear()
            self.teacher_tap.clear()
            loss = loss + self.feature_weight * feat
            items["feat"] = feat.detach()
        return loss * x.shape[0], items

    def combine(self, student_raw: list[torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss: detection loss on ``targets`` (unless label-free) plus the distillation."""
        loss, items = self(student_raw, x)
        if not self.detection:
            return loss, items
        det, det_items = loss_fn(student_raw, targets)
        return det + loss, {**det_items, **items}
