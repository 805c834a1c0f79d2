"""The YOLOv3 loss: darknet decoding, centre-cell assignment, registered for the family."""

import math

import torch

from yoloslim.loss import make_loss
from yoloslim.loss.yolov3 import YOLOv3Loss
from yoloslim.models import create_model


def test_make_loss_picks_the_darknet_variant_and_trains():
    model = create_model("yolov3-lite", nc=3).train()
    loss_fn = make_loss(model, imgsz=64)
    assert isinstance(loss_fn, YOLOv3Loss)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.2, 0.7, 0.1, 0.1]])
    loss, items = loss_fn(model(torch.rand(2, 3, 64, 64)), targets)
    assert torch.isfinite(loss) and loss > 0 and set(items) == {"box", "obj", "cls"}
    loss.backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in model.head_convs)


def test_targets_use_the_centre_cell_only():
    model = create_model("yolov3-tiny", nc=2)
    loss_fn = make_loss(model, imgsz=64)
    shapes = [torch.Size((1, 21, 4, 4)), torch.Size((1, 21, 2, 2))]
    # centre (0.30, 0.60) of a 4x4 grid: cell (1, 2), offsets 0.2 / 0.4 inside it
    level = loss_fn.build_targets(shapes, torch.tensor([[0, 1, 0.30, 0.60, 0.25, 0.25]]))[0]
    assert len(level.gi) > 0
    assert set(level.gi.tolist()) == {1} and set(level.gj.tolist()) == {2}
    assert torch.allclose(level.box[:, :2], torch.tensor([0.2, 0.4]).expand_as(level.box[:, :2]), atol=1e-5)


def test_a_perfect_prediction_has_no_box_loss():
    model = create_model("yolov3-tiny", nc=2)
    loss_fn = make_loss(model, imgsz=64)
    shapes = [torch.Size((1, 21, 4, 4)), torch.Size((1, 21, 2, 2))]
    targets = torch.tensor([[0, 1, 0.30, 0.60, 0.25, 0.25]])
    raw = [torch.full(s, -10.0) for s in shapes]
    for lvl, t in enumerate(loss_fn.build_targets(shapes, targets)):
        p = raw[lvl].view(1, 3, 7, *shapes[lvl][2:])
        for a, gj, gi, box, anc in zip(t.anchor, t.gj, t.gi, t.box, t.anchor_wh, strict=True):
            x, y = box[:2].tolist()
            p[0, a, 0, gj, gi] = math.log(x / (1 - x))  # σ⁻¹ of the offset in the cell
            p[0, a, 1, gj, gi] = math.log(y / (1 - y))
            p[0, a, 2:4, gj, gi] = (box[2:4] / anc).log()  # exp(t)·anchor = size
    _, items = loss_fn(raw, targets)
    assert items["box"] < 1e-5
