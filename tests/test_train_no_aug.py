from dataclasses import dataclass

from yoloslim.cli import main
from yoloslim.data.augment import AugmentConfig
from yoloslim.engine.train import stop_strong_augmentation
from yoloslim.loss import make_loss
from yoloslim.models import create_model


@dataclass
class _Dataset:
    augment: AugmentConfig | None


def test_last_epochs_drop_mosaic_and_warps_but_keep_flips_and_hsv():
    ds = _Dataset(AugmentConfig(mosaic=1.0, mixup=0.1, degrees=5.0))
    loss = make_loss(create_model("yolox-nano", nc=2))
    assert loss.use_l1 is False
    stop_strong_augmentation(ds, loss, epoch=9, log=False)
    a = ds.augment
    assert (a.mosaic, a.mixup, a.degrees, a.translate, a.scale, a.shear, a.perspective) == (0, 0, 0, 0, 0, 0, 0)
    assert (a.fliplr, a.hsv_h) == (AugmentConfig().fliplr, AugmentConfig().hsv_h)
    assert loss.use_l1 is True  # YOLOX switches its L1 term on


def test_no_aug_epochs_runs_through_the_cli(tiny_data, tmp_path):
    code = main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--epochs", "2", "--imgsz", "64",
                 "--batch", "8", "--workers", "0", "--no-aug-epochs", "1", "--out", str(tmp_path / "run")])
    assert code == 0
    log = (tmp_path / "run" / "yoloslim.log").read_text()
    assert "epoch 2: mosaic, mixup and affine augmentation off" in log
