"""The task-aligned assigner on hand cases and the YOLOv8 / YOLO11 loss on hand-made predictions."""

import math

import pytest
import torch

from yoloslim.hyp import Hyp, load_hyp
from yoloslim.loss import make_loss
from yoloslim.loss.tal import TaskAlignedAssigner, pad_targets
from yoloslim.loss.yolov8 import YOLOv8Loss, dfl_loss, make_anchors, reg_max_of
from yoloslim.models import create_model

FAR = [200.0, 200.0, 201.0, 201.0]  # a predicted box overlapping nothing


def _level(preds: dict[tuple[int, int], list[float]], nc: int = 2, score: float = 0.5):
    """One 8x8 level at stride 8 (64 px): anchor points in pixels, every prediction FAR except the
    given cells ``(gx, gy)``, every class probability ``score``; batch of one."""
    points, stride = make_anchors([(8, 8)], [8], torch.device("cpu"))
    boxes = torch.tensor(FAR).repeat(64, 1)
    for (gx, gy), box in preds.items():
        boxes[gy * 8 + gx] = torch.tensor(box)
    return torch.full((1, 64, nc), score), boxes[None], points * stride[:, None]


def _cells(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i) % 8, int(i) // 8) for i in mask.nonzero().flatten()}


def _gts(*boxes, labels=None):
    m = len(boxes)
    return (torch.tensor([labels or [0] * m]), torch.tensor([list(boxes)], dtype=torch.float32),
            torch.ones(1, m, dtype=torch.bool))


def test_assigner_takes_anchors_inside_the_box_and_normalises_their_scores():
    gt = [8.0, 8.0, 32.0, 32.0]  # cell centres 12, 20, 28 lie inside: 3 x 3 candidates
    good = {(1, 1): gt, (2, 2): [9.0, 9.0, 31.0, 31.0]}  # IoU 1 and 0.84
    outside = {(5, 5): gt}  # a perfect box predicted by a cell outside the gt is no candidate
    scores, boxes, points = _level({**good, **outside})
    asg = TaskAlignedAssigner()(scores, boxes, points, *_gts(gt, labels=[1]))
    assert _cells(asg.fg[0]) == set(good)  # the others overlap nothing: metric 0
    assert (asg.gt_index[0][asg.fg[0]] == 0).all()
    assert torch.equal(asg.boxes[0, 1 * 8 + 1], torch.tensor(gt))
    # class 1 only; the best-aligned anchor's target is the best overlap (1), the other t / t_max
    s = asg.scores[0]
    assert s[:, 0].sum() == 0 and s[1 * 8 + 1, 1] == pytest.approx(1.0)
    iou = 22.0**2 / 24.0**2
    assert s[2 * 8 + 2, 1] == pytest.approx(iou**6, rel=1e-4)  # (s^0.5 u^6) / (s^0.5 · 1^6) · 1
    assert s.sum() == pytest.approx(1.0 + iou**6, rel=1e-4)


def test_each_gt_takes_its_top_k_by_alignment():
    gt = [0.0, 0.0, 64.0, 64.0]  # all 64 centres are candidates
    torch.manual_seed(0)
    shrink = torch.rand(64) * 20  # each cell predicts the gt shrunk by its own margin: graded overlaps
    preds = {(i % 8, i // 8): [float(m), float(m), 64.0 - float(m), 64.0 - float(m)] for i, m in enumerate(shrink)}
    scores, boxes, points = _level(preds)
    asg = TaskAlignedAssigner(topk=10)(scores, boxes, points, *_gts(gt))
    best = set(shrink.argsort()[:10].tolist())
    assert set(asg.fg[0].nonzero().flatten().tolist()) == best


def test_an_anchor_claimed_by_two_gts_keeps_the_one_it_overlaps_most():
    left, right = [0.0, 8.0, 30.0, 32.0], [18.0, 8.0, 48.0, 32.0]  # centres x = 20 and 28 lie inside both
    shared = [18.0, 8.0, 46.0, 32.0]  # the cell (2, 2) (x = 20) predicts a box like `right` (IoU 0.93 vs 0.26)
    scores, boxes, points = _level({(2, 2): shared})
    asg = TaskAlignedAssigner()(scores, boxes, points, *_gts(left, right))
    i = 2 * 8 + 2
    assert asg.fg[0, i] and asg.gt_index[0, i] == 1  # in both top-10s (the only non-zero metric), to `right`
    assert _cells(asg.fg[0]) == {(2, 2)}


def test_a_box_smaller_than_a_cell_still_gets_anchors_and_padding_gets_none():
    # a 4 px gt holding no cell centre: its sides are widened to 16 px (2..18) for the candidate test
    tiny = [8.0, 8.0, 12.0, 12.0]
    scores, boxes, points = _level({(0, 0): [7.0, 7.0, 12.0, 12.0], (1, 1): [8.0, 8.0, 13.0, 13.0]})
    labels, gts, mask = _gts(tiny, [40.0, 40.0, 60.0, 60.0])
    mask[0, 1] = False  # a padded gt: never assigned even with a perfect prediction
    boxes[0, 6 * 8 + 6] = gts[0, 1]
    asg = TaskAlignedAssigner(min_size=16.0)(scores, boxes, points, labels, gts, mask)
    assert _cells(asg.fg[0]) == {(0, 0), (1, 1)}
    plain = TaskAlignedAssigner()(scores, boxes, points, labels, gts, mask)
    assert not plain.fg.any()


def test_pad_targets_groups_gts_per_image():
    t = torch.tensor([[2, 1, 0.5, 0.5, 0.5, 0.25], [0, 0, 0.25, 0.25, 0.5, 0.5], [2, 3, 0.5, 0.5, 0.0, 0.1]])
    labels, boxes, mask = pad_targets(t, 4, torch.tensor([64.0, 32.0, 64.0, 32.0]))
    assert labels.shape == (4, 2) and mask.tolist() == [[True, False], [False, False], [True, False],
                                                         [False, False]]  # a zero-width box is no gt
    assert labels[2].tolist() == [1, 3] and boxes[2, 0].tolist() == [16.0, 12.0, 48.0, 20.0]
    assert boxes[0, 0].tolist() == [0.0, 0.0, 32.0, 16.0]
    assert pad_targets(torch.zeros(0, 6), 2, torch.ones(4))[0].shape == (2, 0)


def test_dfl_is_the_cross_entropy_between_the_two_nearest_bins():
    logits = torch.randn(3, 4, 16)
    target = torch.tensor([[2.0, 2.25, 14.5, 0.0]] * 3)
    logp = logits.log_softmax(-1)
    want = -(logp[:, 0, 2] + 0.75 * logp[:, 1, 2] + 0.25 * logp[:, 1, 3] + 0.5 * logp[:, 2, 14]
             + 0.5 * logp[:, 2, 15] + logp[:, 3, 0]) / 4
    torch.testing.assert_close(dfl_loss(logits, target), want)


class StandIn(torch.nn.Module):
    """Holds a spec and a head's reg_max, as the loss reads them; the maps are made by hand."""

    def __init__(self, nc: int = 2) -> None:
        super().__init__()
        self.spec = create_model("yolov8n", nc=nc).spec
        self.reg_max = 16


def _maps(gt_px: list[float], label: int, nc: int = 2, shift: float = 0.0) -> list[torch.Tensor]:
    """Raw maps of one 64 px image where every anchor predicts ``gt_px`` (shifted right by ``shift`` px)
    exactly (the DFL bins of each side hold the two nearest bins' weights), class ``label`` +12 and
    the others −12 (logits) at the anchors inside the box, all classes −12 elsewhere."""
    maps = []
    box = torch.tensor(gt_px) + torch.tensor([shift, 0.0, shift, 0.0])
    for s in (8, 16, 32):
        n = 64 // s
        points, _ = make_anchors([(n, n)], [s], torch.device("cpu"))
        p = points * s  # (A, 2) pixels
        d = (torch.cat((p - box[:2], box[2:] - p), 1) / s).clamp(0, 14.99)  # (A, 4) strides
        lo = d.floor().long()
        w = d - lo
        prob = torch.zeros(len(p), 4, 16).scatter_(-1, lo[..., None], (1 - w)[..., None])
        prob.scatter_add_(-1, (lo + 1)[..., None], w[..., None])
        dist = prob.clamp(min=1e-9).log()  # (A, 4, 16)
        inside = ((p > box[:2]) & (p < box[2:])).all(1)
        cls = torch.full((len(p), nc), -12.0)
        cls[inside, label] = 12.0
        maps.append(torch.cat((dist.flatten(1), cls), 1).T.reshape(1, 64 + nc, n, n))
    return maps


def test_loss_is_near_zero_for_a_perfect_prediction_and_grows_with_a_shifted_box():
    loss_fn = YOLOv8Loss(StandIn(), load_hyp(family="yolov8"))
    gt = [4.0, 4.0, 20.0, 20.0]  # three candidates: (12, 12) at stride 8, (8, 8) at 16, (16, 16) at 32
    targets = torch.tensor([[0, 1, 12 / 64, 12 / 64, 16 / 64, 16 / 64]])
    loss, items = loss_fn(_maps(gt, 1), targets)
    assert items["box"] < 1e-4 and items["cls"] < 1e-3
    # the DFL's floor is the entropy of the two-bin targets: stride 8 (distances 1, 1, 1, 1 strides): 0;
    # stride 16 (0.25, 0.25, 0.75, 0.75): H(0.25) per side; stride 32 (0.375, 0.375, 0.125, 0.125)
    def h(w):
        return -(w * math.log(w) + (1 - w) * math.log(1 - w))

    floor = 1.5 * (0 + h(0.25) + (h(0.375) + h(0.125)) / 2) / 3  # gain · Σ weight · DFL / Σ weight
    assert float(items["dfl"]) == pytest.approx(floor, rel=1e-4)
    torch.testing.assert_close(loss, sum(items.values()))  # batch of one
    _, shifted = loss_fn(_maps(gt, 1, shift=3.0), targets)
    assert shifted["box"] > 0.3 and shifted["dfl"] > items["dfl"] + 0.1  # measured 2.48 and +0.17
    _, wrong_class = loss_fn(_maps(gt, 0), targets)
    assert wrong_class["cls"] > 5.0


def test_real_head_loss_is_finite_every_parameter_gets_a_gradient_and_empty_batches_work():
    model = create_model("yolov8n", nc=3).train()
    loss_fn = make_loss(model, imgsz=64)
    assert loss_fn.gains == {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # unscaled, whatever nc
    assert reg_max_of(model) == 16
    targets = torch.tensor([[0, 0, 0.30, 0.60, 0.25, 0.20], [1, 2, 0.5, 0.5, 0.5, 0.4], [1, 0, 0.2, 0.25, 0.05, 0.08]])
    loss, items = loss_fn(model(torch.rand(3, 3, 64, 64)), targets)  # image 2 has no objects
    assert set(items) == {"box", "cls", "dfl"} and all(torch.isfinite(v) and v > 0 for v in items.values())
    torch.testing.assert_close(loss.detach(), sum(items.values()) * 3)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
    loss, items = loss_fn(model(torch.rand(2, 3, 64, 64)), torch.zeros(0, 6))
    assert items["box"] == items["dfl"] == 0 and items["cls"] > 0 and torch.isfinite(loss)


def test_hyp_family_defaults_reach_the_loss_and_leave_the_other_families_alone(tmp_path):
    assert (Hyp().box, Hyp().cls) == (0.05, 0.5) and load_hyp().box == 0.05
    h = load_hyp(family="yolov8")
    assert (h.box, h.cls, h.dfl) == (7.5, 0.5, 1.5)
    f = tmp_path / "hyp.yaml"
    f.write_text("box: 5.0\n")
    assert load_hyp(f, family="yolov8").box == 5.0 and load_hyp(f, family="yolov8").dfl == 1.5  # a file wins
    v5 = make_loss(create_model("yolov5n", nc=2), imgsz=64)  # YOLOv5's gains, scaled as before
    assert v5.gains == pytest.approx({"box": 0.05, "obj": 1.0 * (64 / 640) ** 2, "cls": 0.5 * 2 / 80})
