"""A tiny YOLOX learns 8 synthetic images through the shared training loop (SimOTA loss, EMA, val)."""

import pytest
import torch

from helpers import self_scored_data
from yoloslim.engine.checkpoint import ModelInfo, load_model, save_model
from yoloslim.engine.train import TrainConfig, train
from yoloslim.models.spec import ArchSpec
from yoloslim.models.yolox import YOLOX


def tiny_yolox_spec(nc: int) -> ArchSpec:
    """YOLOX-s's layout at width 0.125 (stem 8 channels, head 32): 0.56 M parameters."""
    spec = ArchSpec(family="yolox", name="yolox-test", nc=nc, anchors=[], strides=[8, 16, 32],
                    options={"depth_multiple": 0.33, "width_multiple": 0.125, "depthwise": False,
                             "act": "silu", "input_bgr": True, "input_scale": 1.0, "decode": "anchor_free"})
    YOLOX(spec, record=True)  # fills every width and depth
    return spec


@pytest.mark.slow
def test_tiny_yolox_overfits_eight_synthetic_images(tmp_path):
    """mAP@.5 > 0.8 on the 8 training images themselves, at 128 px.

    No augmentation, no warm-up, one step per batch of all 8 images, lr0 0.2 on a cosine down to
    1 %: 250 steps (the loss is the official one × batch / 64, so this lr is 20 times the official
    0.01 — an overfitting run, not a recipe). About 40–75 s on a 2-core machine.
    """
    data, names = self_scored_data(tmp_path / "data", images=9, imgsz=128, seed=0, val_ratio=0.1)
    torch.manual_seed(0)
    spec = tiny_yolox_spec(len(names))
    init = save_model(tmp_path / "init.safetensors", YOLOX(spec), ModelInfo(spec, names, 128))
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.2\nlrf: 0.05\nmomentum: 0.9\nwarmup_epochs: 0\n")
    res = train(TrainConfig(data=str(data), weights=str(init), epochs=250, batch=8, nominal_batch=8,
                            imgsz=128, workers=0, seed=0, hyp=str(hyp), optimizer="SGD", augment=False,
                            cos_lr=True,
                            cache=True, val_every_epoch=False, save_every=1000, device="cpu",
                            out=str(tmp_path / "run")))
    assert res.metrics["map50"] > 0.8, res.metrics
    model, info = load_model(res.best)
    assert info.spec.family == "yolox" and info.history[-1]["action"] in ("trained", "fine-tuned")
