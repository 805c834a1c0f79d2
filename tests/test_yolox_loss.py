"""SimOTA assignment on hand cases and the YOLOX loss on a fixed batch."""

import torch

from yoloslim.loss.yolox import YOLOXLoss, pairwise_iou, priors, simota_assign
from yoloslim.models import create_model

FAR = torch.tensor([60.0, 60.0, 1.0, 1.0])  # a prediction overlapping no gt


def _one_level(preds: dict[tuple[int, int], list[float]], nc: int = 2):
    """Priors of one 8x8 level at stride 8 (64 px); every prediction FAR except the given (gx, gy)."""
    grid, stride = priors([(8, 8)], [8], torch.device("cpu"))
    centers = (grid + 0.5) * stride[:, None]
    boxes = FAR.repeat(64, 1)
    for (gx, gy), box in preds.items():
        boxes[gy * 8 + gx] = torch.tensor(box)
    return boxes, torch.zeros(64), torch.zeros(64, nc), centers, stride


def test_simota_takes_dynamic_k_best_priors_inside_box_and_centre():
    gt = torch.tensor([[20.0, 20.0, 24.0, 24.0]])  # cells 1..3 have their centre inside
    exact = [(2, 2), (1, 2), (2, 1)]
    boxes, obj, cls, centers, stride = _one_level({c: gt[0].tolist() for c in exact})
    asg = simota_assign(boxes, obj, cls, centers, stride, gt, torch.tensor([0]))
    fg_cells = {(int(i) % 8, int(i) // 8) for i in asg.fg.nonzero().flatten()}
    assert fg_cells == set(exact)  # top-10 IoUs sum to 3 -> k = 3, the three exact predictions
    assert asg.gt_index.tolist() == [0, 0, 0] and asg.iou.tolist() == [1.0, 1.0, 1.0]


def test_simota_every_gt_gets_a_prior_k_at_most_10_and_a_prior_has_one_gt():
    torch.manual_seed(0)
    gts = torch.tensor([[20.0, 20.0, 24.0, 24.0], [44.0, 40.0, 30.0, 20.0], [10.0, 54.0, 12.0, 12.0]])
    grid, stride = priors([(8, 8), (4, 4)], [8, 16], torch.device("cpu"))
    centers = (grid + 0.5) * stride[:, None]
    # predictions near each prior's own cell, sized like the gts: many good candidates
    boxes = torch.cat((centers + torch.randn(80, 2), 24 + 4 * torch.randn(80, 2).abs()), 1)
    obj, cls = torch.randn(80), torch.randn(80, 3)
    asg = simota_assign(boxes, obj, cls, centers, stride, gts, torch.tensor([0, 1, 2]))
    counts = torch.bincount(asg.gt_index, minlength=3)
    assert (counts >= 1).all() and (counts <= 10).all()
    assert asg.gt_index.shape[0] == int(asg.fg.sum()) == asg.iou.shape[0]  # one gt per foreground prior
    ious = pairwise_iou(gts, boxes[asg.fg])
    torch.testing.assert_close(asg.iou, ious[asg.gt_index, torch.arange(len(asg.iou))])
    # each foreground prior lies in its gt's box or centre region
    c, g = centers[asg.fg], gts[asg.gt_index]
    in_box = ((c - g[:, :2]).abs() < g[:, 2:] / 2).all(1)
    in_center = ((c - g[:, :2]).abs() < 2.5 * stride[asg.fg, None]).all(1)
    assert (in_box | in_center).all()


def test_prior_claimed_by_two_gts_goes_to_the_cheaper():
    gts = torch.tensor([[20.0, 20.0, 24.0, 24.0], [36.0, 20.0, 24.0, 24.0]])
    # cell (3, 2) predicts x 18..42: IoU 0.41 with gt 0 (x 8..32), 0.6 with gt 1 (x 24..48)
    boxes, obj, cls, centers, stride = _one_level({(3, 2): [30.0, 20.0, 24.0, 24.0]})
    asg = simota_assign(boxes, obj, cls, centers, stride, gts, torch.tensor([0, 1]))
    assert asg.fg.nonzero().flatten().tolist() == [2 * 8 + 3]
    assert asg.gt_index.tolist() == [1]
    assert abs(asg.iou.item() - 0.6) < 1e-6


TARGETS = torch.tensor([[0, 0, 0.30, 0.60, 0.25, 0.20],
                        [1, 1, 0.50, 0.50, 0.50, 0.40],
                        [1, 0, 0.20, 0.25, 0.20, 0.30]])


def test_loss_items_batch_scaling_and_empty_images():
    model = create_model("yolox-nano", nc=2).train()
    loss_fn = YOLOXLoss(model)
    raw = model(torch.rand(3, 3, 64, 64) * 255)
    loss, items = loss_fn(raw, TARGETS)  # image 2 has no objects
    assert set(items) == {"iou", "obj", "cls", "l1"} and items["l1"] == 0
    total = items["iou"] + items["obj"] + items["cls"]
    torch.testing.assert_close(loss.detach(), total * 3 / 64)  # official loss × batch / 64
    assert 0 < items["iou"] <= 5.0  # 5 · (1 − IoU²) per matched prior
    loss_fn.use_l1 = True
    loss, items = loss_fn(raw, TARGETS)
    assert items["l1"] > 0 and torch.isfinite(loss)
    loss, items = loss_fn(raw, torch.zeros(0, 6))  # no objects at all: objectness only
    assert items["iou"] == items["cls"] == 0 and items["obj"] > 0
    loss.backward()
    assert model.head.obj_preds[0].bias.grad is not None


def test_loss_decreases_on_a_fixed_batch():
    model = create_model("yolox-nano", nc=2).train()
    loss_fn = YOLOXLoss(model)
    loss_fn.use_l1 = True
    x = torch.rand(2, 3, 64, 64) * 255
    opt = torch.optim.Adam(model.parameters(), lr=0.003)  # Adam: invariant to the loss scale
    losses = []
    for _ in range(20):
        loss, _ = loss_fn(model(x), TARGETS[:2] * torch.tensor([0, 1, 1, 1, 1, 1]))  # both on image 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(v == v for v in losses)  # no NaN
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


def test_registry_builds_the_yolox_loss():
    from yoloslim.loss import make_loss

    loss_fn = make_loss(create_model("yolox-nano", nc=2), imgsz=64)
    assert isinstance(loss_fn, YOLOXLoss) and loss_fn.strides == [8, 16, 32] and not loss_fn.use_l1
