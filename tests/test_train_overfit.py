import pytest

from helpers import self_scored_data
from yoloslim.engine.train import TrainConfig, train


@pytest.mark.slow
def test_tiny_model_overfits_eight_synthetic_images(tmp_path):
    """YOLOv5n at 96 px learns 8 synthetic images (validated on the same images): mAP@.5 > 0.6.

    No augmentation, no warm-up, a step on every batch of 8 (the nominal batch), lr0 0.1 decaying
    linearly: 250 steps, about 40 s on an idle 2-core machine (the 100-iteration warm-up and the
    64-image accumulation of a real run would take far longer to get there).

    Repeatable on one machine, but chaotic in floating-point rounding (see the YOLOX twin in
    test_yolox_train.py): over training seeds 0-3 (standing in for another CPU's kernels) it scored
    0.942, 0.828, 0.936 and 0.811, so the former 0.8 threshold was a near miss waiting to happen.
    """
    data, _ = self_scored_data(tmp_path / "data", images=10, imgsz=96, seed=2, val_ratio=0.2)
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.1\nwarmup_epochs: 0\n")
    res = train(TrainConfig(data=str(data), model="yolov5n", epochs=250, batch=8, nominal_batch=8,
                            imgsz=96, workers=0, seed=0, hyp=str(hyp), optimizer="SGD", augment=False,
                            val_every_epoch=False, save_every=1000, device="cpu", out=str(tmp_path / "run")))
    assert res.metrics["map50"] > 0.6, res.metrics
    assert res.best.is_file() and res.last.is_file()
