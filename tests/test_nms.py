"""NMS against a plain per-class greedy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yoloslim.models.nms import box_iou, nms, non_max_suppression


def _reference(pred: torch.Tensor, conf: float, iou: float, max_det: int, multi_label: bool, agnostic: bool):
    """Candidates as YOLOv5 forms them, then the textbook greedy loop, class by class."""
    out = []
    for x in pred.double():
        rows = []  # (score, candidate index, x1, y1, x2, y2, cls)
        k = 0
        for r in x.tolist():
            cx, cy, w, h, obj, *cls = r
            if obj <= conf:
                continue
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            s = [obj * c for c in cls]
            picks = [j for j in range(len(s)) if s[j] > conf] if multi_label else \
                [int(np.argmax(s))] if max(s) > conf else []
            for j in picks:
                rows.append((s[j], k, *box, j))
                k += 1
        rows.sort(key=lambda r: (-r[0], r[1]))
        boxes = torch.tensor([r[2:6] for r in rows], dtype=torch.float64).view(-1, 4)
        iou_m = box_iou(boxes, boxes).numpy()
        kept = []
        for i, r in enumerate(rows):
            if all(iou_m[i, q] <= iou for q in kept if agnostic or rows[q][6] == r[6]):
                kept.append(i)
        kept = [rows[i] for i in kept]
        rows = [[*r[2:6], r[0], r[6]] for r in kept[:max_det]]
        out.append(torch.tensor(rows, dtype=torch.float64).view(-1, 6))
    return out


def _random_pred(n: int, nc: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=g, dtype=torch.float64) * 200  # clusters: many overlaps
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64) * 6
    xy = centres[torch.randint(0, 8, (n,), generator=g)] + noise
    wh = 20 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    obj = torch.rand(n, 1, generator=g, dtype=torch.float64)
    cls = torch.rand(n, nc, generator=g, dtype=torch.float64)
    cls[: n // 4] = (cls[: n // 4] * 10).round() / 10  # ties in score
    obj[: n // 4] = 0.5
    return torch.cat((xy, wh, obj, cls), 1)[None]


@pytest.mark.parametrize("multi_label,agnostic", [(True, False), (False, False), (True, True)])
def test_nms_matches_reference(multi_label: bool, agnostic: bool) -> None:
    pred = _random_pred(300, 3, seed=int(multi_label) + 2 * int(agnostic))
    for iou in (0.3, 0.6):
        ours = non_max_suppression(pred, conf_thres=0.1, iou_thres=iou, max_det=1000,
                                   multi_label=multi_label, agnostic=agnostic)
        ref = _reference(pred, 0.1, iou, 1000, multi_label, agnostic)
        assert ours[0].shape == ref[0].shape and ours[0].shape[0] > 10
        torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-9)


def test_nms_blocks_and_max_det() -> None:
    """Across block boundaries (more than 1024 candidates) and with the max_det early stop."""
    g = torch.Generator().manual_seed(3)
    n = 2600
    xy = torch.rand(n, 2, generator=g) * 600
    boxes = torch.cat((xy, xy + 10 + torch.rand(n, 2, generator=g) * 60), 1)
    scores = (torch.rand(n, generator=g) * 50).round() / 50  # many ties
    iou = box_iou(boxes, boxes).numpy()
    order = np.argsort(-scores.numpy(), kind="stable")
    kept: list[int] = []
    for i in order:
        if not (iou[i, kept] > 0.5).any():
            kept.append(int(i))
    assert len(kept) > 150
    assert nms(boxes, scores, 0.5).tolist() == kept
    assert nms(boxes, scores, 0.5, max_keep=100).tolist() == kept[:100]


def test_nms_batch_shapes_and_limits() -> None:
    pred = torch.cat([_random_pred(200, 4, seed=s) for s in range(3)]).float()
    pred[1, :, 4] = 0  # an image with nothing above the threshold
    out = non_max_suppression(pred, conf_thres=0.05, iou_thres=0.6, max_det=7)
    assert [o.shape[1] for o in out] == [6, 6, 6]
    assert out[0].shape[0] == 7 and out[1].shape[0] == 0 and out[2].shape[0] == 7
    assert torch.all(out[0][:-1, 4] >= out[0][1:, 4])
    capped = non_max_suppression(pred, conf_thres=0.05, iou_thres=0.6, max_det=300, max_nms=20)
    assert capped[0].shape[0] <= 20
    with pytest.raises(ValueError):
        non_max_suppression(pred, conf_thres=1.5)
