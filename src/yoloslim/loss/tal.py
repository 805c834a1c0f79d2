"""Task-aligned label assignment (TOOD, Feng et al. 2021, arXiv:2108.07755), batched over images.

Every anchor point (a grid cell's centre, one per cell of every level) is a candidate for every
ground-truth box of its image. Per image, with ``s`` the predicted probability of the gt's class and
``u`` the overlap of the predicted box with the gt box:

1. candidates: anchor points strictly inside the gt box; for this test only, a side shorter than
   ``min_size`` (YOLOv8Loss: the middle stride, 16 px) is widened to it about the box's centre, so
   that a box smaller than a cell still has candidates (the plain rule leaves a gt that holds no
   cell centre without anchors: at 64-160 px most of them; ultralytics 8.4's assigner behaves the
   same way, checked on hand-made boxes);
2. alignment metric ``t = s^α · u^β`` (α = 0.5, β = 6 as YOLOv8; ``u`` is the CIoU clamped at 0, as
   YOLOv8 uses it, where TOOD uses the IoU);
3. each gt takes its ``topk`` (10) candidates of highest ``t`` (those with ``t > 0``);
4. an anchor taken by several gts keeps the one its predicted box overlaps most, of all gts that
   contain it (as YOLOv8 does: possibly one that did not rank it in its top k; ties: the first);
5. soft targets: the class score target of a positive anchor is ``t / max t · max u``, the maxima
   over the positives of its gt (so each gt's best-aligned anchor learns the best overlap any of
   its anchors reached), zero for every other class and for the background.

Images are processed together: their gt boxes are padded to the largest count, a mask says which
are real. Everything runs under ``no_grad`` on detached predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from yoloslim.loss.iou import paired_iou

TOPK = 10
ALPHA = 0.5
BETA = 6.0


@dataclass
class Assignment:
    """The targets of every anchor of a batch.

    Attributes:
        fg: (b, A) bool, anchors that learn from a gt.
        gt_index: (b, A) the gt (index into the padded gts) of each anchor, 0 for the background.
        boxes: (b, A, 4) ``x1, y1, x2, y2`` of the anchor's gt (meaningless for the background).
        scores: (b, A, nc) soft class targets (0 for the background).
    """

    fg: torch.Tensor
    gt_index: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor


def pad_targets(targets: torch.Tensor, batch: int, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """Targets ``(N, 6) [img, cls, cx, cy, w, h]`` (0..1) to per-image padded gts in pixels.

    Args:
        targets: the batch's labels.
        batch: number of images.
        scale: (4,) ``w, h, w, h`` of the input in pixels.

    Returns:
        ``labels`` (b, M) long, ``boxes`` (b, M, 4) ``x1, y1, x2, y2`` pixels and ``mask`` (b, M) bool
        (the real gts), with M the largest number of gts in an image (0 when there are none).
    """
    device = targets.device
    img = targets[:, 0].long()
    counts = torch.bincount(img, minlength=batch) if len(img) else torch.zeros(batch, dtype=torch.long,
                                                                               device=device)
    m = int(counts.max()) if batch else 0
    labels = torch.zeros(batch, m, dtype=torch.long, device=device)
    boxes = torch.zeros(batch, m, 4, device=device)
    mask = torch.zeros(batch, m, dtype=torch.bool, device=device)
    if m:
        order = torch.argsort(img, stable=True)
        img = img[order]
        first = torch.cumsum(counts, 0) - counts  # (b,) index of each image's first target
        slot = torch.arange(len(img), device=device) - first[img]  # position within its image
        xywh = targets[order, 2:6] * scale
        labels[img, slot] = targets[order, 1].long()
        boxes[img, slot] = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
        mask[img, slot] = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    return labels, boxes, mask


class TaskAlignedAssigner:
    """TOOD's task-aligned assigner (see the module docstring).

    Args:
        topk: anchors each gt takes.
        alpha: exponent of the class score in the alignment metric.
        beta: exponent of the overlap.
        min_size: in pixels; a gt side shorter than this is widened to it for the candidate test.
        eps: guard against division by zero.
    """

    def __init__(self, topk: int = TOPK, alpha: float = ALPHA, beta: float = BETA, min_size: float = 0.0,
                 eps: float = 1e-9) -> None:
        self.topk, self.alpha, self.beta, self.min_size, self.eps = topk, alpha, beta, min_size, eps

    @torch.no_grad()
    def __call__(self, scores: torch.Tensor, boxes: torch.Tensor, anchors: torch.Tensor, gt_labels: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        """Assign the gts of every image to its anchors.

        Args:
            scores: (b, A, nc) predicted class probabilities (after the sigmoid).
            boxes: (b, A, 4) predicted ``x1, y1, x2, y2`` in pixels.
            anchors: (A, 2) anchor points ``x, y`` in pixels.
            gt_labels: (b, M) class of each padded gt.
            gt_boxes: (b, M, 4) ``x1, y1, x2, y2`` in pixels.
            gt_mask: (b, M) bool, the real gts.

        Returns:
            The :class:`Assignment`.
        """
        b, a, nc = scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return Assignment(torch.zeros(b, a, dtype=torch.bool, device=scores.device),
                              torch.zeros(b, a, dtype=torch.long, device=scores.device),
                              boxes.new_zeros(b, a, 4), scores.new_zeros(b, a, nc))
        scores, boxes, gt_boxes = scores.float(), boxes.float(), gt_boxes.float()
        inside = self.inside_boxes(anchors, gt_boxes) & gt_mask[..., None]  # (b, M, A)
        metric, overlaps = self.alignment(scores, boxes, gt_labels, gt_boxes, inside)  # (b, M, A) each

        k = min(self.topk, a)
        top = metric.topk(k, dim=-1).indices  # (b, M, k)
        in_topk = torch.zeros_like(inside).scatter_(-1, top, True)
        pos = in_topk & inside & (metric > 0)  # (b, M, A); a zero metric would give a zero target anyway

        # an anchor taken by several gts keeps the gt containing it that it overlaps most
        multi = pos.sum(1, keepdim=True) > 1  # (b, 1, A)
        if multi.any():
            best = torch.where(inside, overlaps, -1.0).argmax(1)  # (b, A)
            pos = torch.where(multi, torch.arange(m, device=pos.device)[None, :, None] == best[:, None], pos)
        fg = pos.any(1)  # (b, A)
        gt_index = pos.float().argmax(1)  # (b, A)

        labels = gt_labels.gather(1, gt_index)  # (b, A)
        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (b, A, 4)
        metric = metric * pos
        best_metric = metric.amax(-1, keepdim=True)  # (b, M, 1)
        best_overlap = (overlaps * pos).amax(-1, keepdim=True)  # (b, M, 1)
        norm = (metric * best_overlap / (best_metric + self.eps)).amax(1)  # (b, A)
        target_scores = F.one_hot(labels, nc).float() * (norm * fg)[..., None]  # (b, A, nc)
        return Assignment(fg, gt_index, target_boxes, target_scores)

    def inside_boxes(self, anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """(b, M, A) bool: the anchor point lies strictly inside the gt box (sides widened to ``min_size``)."""
        center = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (b, M, 2)
        half = ((gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=self.min_size) / 2)[:, :, None]  # (b, M, 1, 2)
        xy = anchors[None, None]  # (1, 1, A, 2)
        d = torch.cat((xy - (center[:, :, None] - half), (center[:, :, None] + half) - xy), -1)  # (b, M, A, 4)
        return d.amin(-1) > self.eps

    def alignment(self, scores: torch.Tensor, boxes: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                  inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The alignment metric ``s^α·u^β`` and the overlap ``u`` of every (gt, anchor) pair, 0 outside the gt."""
        b, m, a = inside.shape
        overlaps = scores.new_zeros(b, m, a)
        cls_score = scores.new_zeros(b, m, a)
        bi, mi, ai = inside.nonzero(as_tuple=True)
        if len(bi):
            overlaps[bi, mi, ai] = paired_iou(gt_boxes[bi, mi], boxes[bi, ai], xywh=False, kind="ciou").clamp(0)
            cls_score[bi, mi, ai] = scores[bi, ai, gt_labels[bi, mi]]
        return cls_score.pow(self.alpha) * overlaps.pow(self.beta), overlaps
