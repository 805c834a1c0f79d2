"""Training YOLOv8 / YOLO11: the loss teaches a real head, the trainer runs the family's recipe."""

import pytest
import torch
import yaml

from yoloslim.cli import main
from yoloslim.engine.train_state import load_state
from yoloslim.hyp import family_defaults
from yoloslim.loss import make_loss
from yoloslim.loss.iou import paired_iou
from yoloslim.models import create_model
from yoloslim.models.decode import Decoder


def _two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64 px images (RGB 0..1), one box each: a wide grey box (class 0), a tall red one (class 1)."""
    x = torch.full((2, 3, 64, 64), 0.1)
    x[0, :, 8:32, 16:48] = 0.9
    x[1, 0, 30:60, 20:40] = 0.9
    targets = torch.tensor([[0, 0, 32 / 64, 20 / 64, 32 / 64, 24 / 64], [1, 1, 30 / 64, 45 / 64, 20 / 64, 30 / 64]])
    return x, targets


@pytest.mark.slow
def test_25_steps_on_two_images_lower_the_loss_and_find_the_boxes():
    x, targets = _two_images()
    model = create_model("yolov8n", nc=2).train()
    loss_fn = make_loss(model, imgsz=64)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _items = loss_fn(model(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()) / 2)
    # more anchors become positives as the boxes align, so the loss first rises (measured 1.9 -> 8.1), then falls
    assert sum(losses[-5:]) / 5 < 0.5 * max(losses[:12]), losses  # measured 1.8 vs 8.1
    with torch.no_grad():
        rows = Decoder(model.spec)(model(x))  # (2, N, 5 + nc): the shared decoding agrees with the loss's
    for b in range(2):
        conf, cls = rows[b, :, 5:].max(1)
        best = int(conf.argmax())
        gt = targets[b, 2:] * 64
        assert int(cls[best]) == b and float(conf[best]) > 0.5  # measured 0.93, 0.93
        assert float(paired_iou(rows[b, best:best + 1, :4], gt[None], kind="iou")) > 0.7  # measured 0.92, 0.94


def test_cli_training_logs_box_cls_dfl_closes_mosaic_and_keeps_it_in_the_state(tiny_data, tmp_path):
    assert family_defaults("yolov5").no_aug_epochs == 0 and family_defaults("yolov8").no_aug_epochs == 10
    run = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--model", "yolov8n", "--epochs", "2", "--imgsz", "64",
                 "--batch", "8", "--workers", "0", "--no-plots", "--out", str(run)])
    assert code == 0
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith(("train/", "val/"))] == [
        "train/box", "train/cls", "train/dfl", "val/box", "val/cls", "val/dfl"]
    # the family's default: the last 10 epochs (here both) without mosaic, as ultralytics' close_mosaic
    assert "epoch 1: mosaic, mixup and affine augmentation off" in (run / "yoloslim.log").read_text()
    state = load_state(run / "weights" / "last_state.pt")
    assert state["config"]["no_aug_epochs"] == 10
    assert (state["hyp"]["box"], state["hyp"]["cls"], state["hyp"]["dfl"]) == (7.5, 0.5, 1.5)
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["config"]["no_aug_epochs"] == 10 and args["hyp"]["box"] == 7.5
