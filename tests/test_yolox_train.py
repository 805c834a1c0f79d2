"""A tiny YOLOX learns 8 synthetic images through the shared training loop (SimOTA loss, EMA, val)."""

import pytest
import torch

from helpers import self_scored_data
from yoloslim.engine.train import TrainConfig, train
from yoloslim.models.io import ModelInfo, load_model, save_model
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
    """mAP@.5 > 0.6 on the 8 training images themselves, at 96 px.

    No augmentation, one step per batch of all 8 images, lr0 0.2 on a cosine down to 5 %, the
    default 100-step warm-up: 400 steps (the loss is the official one × batch / 64, so this lr is 20
    times the official 0.01 — an overfitting run, not a recipe).

    The run is bit-for-bit repeatable on one machine (one thread, no loader processes, seeded), but
    its result is a chaotic function of floating-point rounding, so another CPU's kernels give
    another number. Seeds stand in for that: the former recipe (128 px, 250 steps, no warm-up) gave
    mAP@.5 0.787, 0.882, 0.677 and 0.725 for seeds 0-3, around its 0.8 threshold (with ~3 objects
    per class, each missed object moves mAP@.5 by ~0.05). This one gave 0.950, 0.974, 0.944, 0.856 and 0.969 for
    seeds 0-4; without the warm-up one seed in five got stuck at 0.78 with objects never found,
    hence a threshold that even such a run clears by a wide margin. Fewer pixels per step (96 px
    instead of 128) pay for the extra steps.
    """
    data, names = self_scored_data(tmp_path / "data", images=9, imgsz=96, seed=0, val_ratio=0.1)
    torch.manual_seed(0)
    spec = tiny_yolox_spec(len(names))
    init = save_model(tmp_path / "init.safetensors", YOLOX(spec), ModelInfo(spec, names, 96))
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.2\nlrf: 0.05\nmomentum: 0.9\nwarmup_epochs: 1\n")  # 1 epoch = 1 step: the 100-step floor
    res = train(TrainConfig(data=str(data), weights=str(init), epochs=400, batch=8, nominal_batch=8,
                            imgsz=96, workers=0, seed=0, hyp=str(hyp), optimizer="SGD", augment=False,
                            cos_lr=True,
                            cache=True, val_every_epoch=False, save_every=1000, device="cpu",
                            out=str(tmp_path / "run")))
    assert res.metrics["map50"] > 0.6, res.metrics
    model, info = load_model(res.best)
    assert info.spec.family == "yolox" and info.history[-1]["action"] in ("trained", "fine-tuned")
