import math

import pytest
import torch

from yoloslim.errors import UserError
from yoloslim.hyp import Hyp
from yoloslim.loss import make_loss
from yoloslim.loss.iou import paired_iou
from yoloslim.models import create_model

# [img, cls, cx, cy, w, h] normalised; a small, a medium and a large object
TARGETS = torch.tensor([
    [0, 0, 0.30, 0.60, 0.0625, 0.0625],
    [1, 2, 0.50, 0.50, 0.50, 0.40],
    [1, 1, 0.20, 0.25, 0.20, 0.30],
])




def _tiny(nc=3):
    return create_model("yolov5n", nc=nc).train()


def test_loss_is_finite_and_decreases_on_a_fixed_batch():
    model = _tiny()
    loss_fn = make_loss(model, Hyp(), imgsz=64)
    x = torch.rand(2, 3, 64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(20):
        loss, items = loss_fn(model(x), TARGETS)
        assert torch.isfinite(loss) and loss.ndim == 0
        assert set(items) == {"box", "obj", "cls"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_anchor_matching_hand_case():
    """A 4x4 px object at (19.2, 38.4) in a 64 px image: only anchor 0 (10x13) of the stride-8 level
    matches (ratio < 4); its centre cell (2, 4) plus the left (1, 4) and lower (2, 5) neighbours."""
    loss_fn = make_loss(_tiny(), Hyp(), imgsz=64)
    shapes = [torch.Size((1, 24, 64 // s, 64 // s)) for s in (8, 16, 32)]
    levels = loss_fn.build_targets(shapes, TARGETS[:1])
    p3 = levels[0]
    assert p3.anchor.tolist() == [0, 0, 0]
    assert list(zip(p3.gi.tolist(), p3.gj.tolist(), strict=True)) == [(2, 4), (1, 4), (2, 5)]
    torch.testing.assert_close(p3.box, torch.tensor([[0.4, 0.8, 0.5, 0.5], [1.4, 0.8, 0.5, 0.5],
                                                     [0.4, -0.2, 0.5, 0.5]]), atol=1e-5, rtol=0)
    assert p3.anchor_wh.tolist() == [[1.25, 1.625]] * 3
    assert [len(lv.img) for lv in levels[1:]] == [0, 0]


def test_large_object_matches_only_large_anchors():
    loss_fn = make_loss(_tiny(), Hyp(), imgsz=256)
    shapes = [torch.Size((1, 24, 256 // s, 256 // s)) for s in (8, 16, 32)]
    # 200 x 180 px: far beyond 4x every stride-8 anchor, within 4x of all stride-32 anchors
    levels = loss_fn.build_targets(shapes, torch.tensor([[0, 1, 0.5, 0.5, 200 / 256, 180 / 256]]))
    assert len(levels[0].img) == 0
    assert sorted(set(levels[2].anchor.tolist())) == [0, 1, 2]


def test_every_parameter_gets_a_gradient_through_the_loss():
    model = _tiny()
    loss, _ = make_loss(model, Hyp(), imgsz=64)(model(torch.rand(2, 3, 64, 64)), TARGETS)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_loss_is_multiplied_by_batch_size():
    model = _tiny().eval()  # eval: BN statistics do not depend on the batch
    loss_fn = make_loss(model, Hyp(), imgsz=64)
    x = torch.rand(1, 3, 64, 64)
    t = TARGETS[:1]
    one, _ = loss_fn(model(x), t)
    t2 = torch.cat((t, t.clone().index_fill_(1, torch.tensor([0]), 1.0)))
    two, _ = loss_fn(model(torch.cat((x, x))), t2)
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-5)


def test_gains_are_scaled_for_image_size_and_classes():
    loss_fn = make_loss(_tiny(nc=8), Hyp(), imgsz=320)
    assert loss_fn.gains["box"] == pytest.approx(0.05)
    assert loss_fn.gains["obj"] == pytest.approx(0.25)
    assert loss_fn.gains["cls"] == pytest.approx(0.5 * 8 / 80)


def test_no_targets_gives_objectness_only():
    model = _tiny()
    loss, items = make_loss(model, Hyp(), imgsz=64)(model(torch.rand(2, 3, 64, 64)), torch.zeros(0, 6))
    assert torch.isfinite(loss) and items["box"] == 0 and items["cls"] == 0 and items["obj"] > 0


def test_ciou_values():
    a = torch.tensor([[5.0, 5.0, 4.0, 4.0]])
    assert paired_iou(a, a, kind="ciou").item() == pytest.approx(1.0, abs=1e-6)
    b = torch.tensor([[7.0, 5.0, 4.0, 4.0]])  # shifted by half a width: IoU 1/3, same aspect
    iou = 8 / 24
    diou = iou - 4 / (6**2 + 4**2)
    assert paired_iou(a, b, kind="iou").item() == pytest.approx(iou, rel=1e-5)
    assert paired_iou(a, b, kind="ciou").item() == pytest.approx(diou, rel=1e-5)
    c = torch.tensor([[5.0, 5.0, 2.0, 8.0]])  # same centre, area 16, different aspect
    v = 4 / math.pi**2 * (math.atan(2 / 8) - math.atan(1.0)) ** 2
    iou_c = 8 / 24
    assert paired_iou(a, c, kind="ciou").item() == pytest.approx(iou_c - v * v / (v - iou_c + 1), rel=1e-4)


def test_unknown_family_is_refused():
    model = _tiny()
    model.spec.family = "nosuch"
    with pytest.raises(UserError, match="unknown model family 'nosuch'"):
        make_loss(model, Hyp())
