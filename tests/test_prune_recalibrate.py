"""BN recalibration after pruning: only running statistics change, agreement with the unpruned model rises,
and ``yoloslim prune`` recalibrates on ``--calib`` or, by default, on ``--data``'s train split."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from helpers import randomize_bn, self_scored_data
from yoloslim.cli import main
from yoloslim.data.calibration import calibration_images
from yoloslim.data.dataset import load_data
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.models.decode import preprocess
from yoloslim.models.io import ModelInfo, read_info, save_model
from yoloslim.prune import PruneOptions, prune_model
from yoloslim.prune.recalibrate import CALIB_IMAGES, recalibrate_bn

STATS = ("running_mean", "running_var", "num_batches_tracked")


def test_recalibration_changes_only_bn_running_stats():
    model = randomize_bn(create_model("yolov5n", nc=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(6, 3, 64, 64)
    assert recalibrate_bn(model, [x[:4], x[4:]]) == 6
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(STATS) for k in changed)
    assert {k for k in before if k.endswith(("running_mean", "running_var"))} == changed - {
        k for k in changed if k.endswith("num_batches_tracked")}
    assert not model.training and not any(m.training for m in model.modules())
    assert all(m.momentum == 0.03 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # momentum=None: the cumulative average of the two batches' means (not the last batch's)
    first = model.model[0]
    with torch.no_grad():
        mean = (first.conv(x[:4]).mean((0, 2, 3)) + first.conv(x[4:]).mean((0, 2, 3))) / 2
    assert torch.allclose(first.bn.running_mean, mean, atol=1e-5)


def test_recalibration_stops_at_max_images_and_refuses_no_images():
    model = randomize_bn(create_model("yolov5n", nc=3))
    batches = [torch.rand(4, 3, 64, 64) for _ in range(3)]
    assert recalibrate_bn(model, batches, max_images=6) == 6
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="no image"):
        recalibrate_bn(model, [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # old statistics kept


@pytest.mark.slow
def test_recalibration_brings_a_pruned_trained_model_back_toward_the_original(tmp_path):
    """YOLOv5n trained to mAP@.5 > 0.9 on 8 synthetic images (test_train_overfit's recipe, about 40 s), pruned
    l1 0.1 without fine-tuning: recalibrated on those images, it finds far more of what the original finds.

    Measured: mAP@.5 0.94 unpruned, 0.23 pruned, 0.61 pruned + recalibrated (mAP@.5:.95 0.71, 0.11, 0.31).
    """
    from yoloslim.data.dataset import DetectionDataset, create_loader
    from yoloslim.engine.evaluate import evaluate
    from yoloslim.engine.train import TrainConfig, train
    from yoloslim.models.io import load_model

    data, names = self_scored_data(tmp_path / "data", images=10, imgsz=96, seed=2, val_ratio=0.2)
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.1\nwarmup_epochs: 0\n")
    run = train(TrainConfig(data=str(data), model="yolov5n", epochs=250, batch=8, nominal_batch=8, imgsz=96,
                            workers=0, seed=0, hyp=str(hyp), augment=False, val_every_epoch=False,
                            save_every=1000, device="cpu", out=str(tmp_path / "run")))
    model, _ = load_model(run.last)
    model.eval()
    loader = create_loader(DetectionDataset(load_data(data).splits["val"], 96), batch_size=8, shuffle=False,
                           workers=0)

    def map50(m):
        return float(evaluate(m, loader, names, progress=False).metrics.map50)

    original = map50(model)
    pruned = prune_model(model, PruneOptions(method="l1", ratio=0.1, round_to=1)).model.eval()
    raw = map50(pruned)
    images = calibration_images(str(data), 96, CALIB_IMAGES, batch=8)
    assert recalibrate_bn(pruned, (preprocess(x, pruned.spec) for x in images)) == 8
    calibrated = map50(pruned)
    assert original > 0.8
    assert calibrated > raw + 0.2 and calibrated > 2 * raw, (original, raw, calibrated)


@pytest.fixture()
def weights(tmp_path, tiny_data):
    names = load_data(tiny_data).names
    model = randomize_bn(create_model("yolov5n", nc=len(names)))
    path = tmp_path / "base.safetensors"
    save_model(path, model, ModelInfo(model.spec, names, 64))
    return path


def test_prune_cli_recalibrates_on_a_folder_of_images(tmp_path, weights):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.jpg"), rng.integers(0, 255, (48 + 8 * i, 80, 3), dtype=np.uint8))
    out, js = tmp_path / "pruned.safetensors", tmp_path / "r.json"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.3", "--calib", str(folder),
                 "--calib-images", "3", "--latency-runs", "0", "--out", str(out), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["calib"] == {"source": str(folder), "images": 3, "kept": True}
    assert report["uncalibrated"] is None  # no --data: no mAP to show before and after
    event = read_info(out).history[-1]
    assert event["calib"] == str(folder) and event["calib_images"] == 3


def test_prune_cli_recalibrates_on_the_train_split_of_data_by_default(tmp_path, weights, tiny_data, capsys):
    js = tmp_path / "r.json"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.3", "--data", str(tiny_data),
                 "--latency-runs", "0", "--workers", "0", "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["calib"]["source"] == str(tiny_data) and report["calib"]["images"] == 16  # train, not val
    assert set(report["uncalibrated"]) == {"map50", "map"}
    assert "Recalibrated" in capsys.readouterr().out
    js2 = tmp_path / "r2.json"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.3", "--data", str(tiny_data),
                 "--no-calib", "--latency-runs", "0", "--workers", "0", "--json", str(js2)]) == 0
    plain = json.loads(js2.read_text())
    assert plain["calib"] is None and plain["uncalibrated"] is None
    assert plain["after"]["map"] == report["uncalibrated"]["map"]  # the same cut, before recalibration


def test_bad_calib_sources_get_one_line(tmp_path, weights, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, msg in ((["--calib", str(tmp_path / "nowhere")], "no such data set, folder"),
                      (["--calib", str(empty)], "no images in this folder"),
                      (["--calib", str(empty), "--no-calib"], "contradict"),
                      (["--calib", str(weights.parent), "--calib-images", "0"], "at least 1")):
        code = main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.3", "--latency-runs", "0",
                     *args])
        assert code != 0
        assert msg in capsys.readouterr().err


def test_calib_images_help_states_the_default():
    import argparse

    from yoloslim.cli import prune as cli_prune

    sub = argparse.ArgumentParser().add_subparsers()
    cli_prune.add(sub)
    helps = {a.dest: a.help for a in sub.choices["prune"]._actions}
    assert f"default {CALIB_IMAGES}" in helps["calib_images"]


def test_default_recalibration_that_lowers_val_map_is_not_kept(tmp_path, weights, tiny_data, monkeypatch):
    """With only --data, a recalibration that lowers val mAP@.5:.95 is reported and dropped; --calib keeps it."""
    import yoloslim.workflows.prune as wf

    def fake_evaluate(models, *args):  # the recalibrated model ("after") scores lower than the plain cut
        scores = {"before": 0.3, "pruned": 0.2, "after": 0.1}
        return {k: {"map50": scores[k], "map": scores[k] / 2} for k in models}

    monkeypatch.setattr(wf, "_evaluate", fake_evaluate)
    common = ["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.3", "--data", str(tiny_data),
              "--latency-runs", "0", "--workers", "0"]
    out, js = tmp_path / "p.safetensors", tmp_path / "r.json"
    assert main([*common, "--out", str(out), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["calib"]["kept"] is False and report["calib"]["images"] == 16
    assert report["after"]["map"] == 0.1 and report["recalibrated"]["map"] == 0.05
    assert read_info(out).history[-1]["calib_kept"] is False
    plain = tmp_path / "plain.safetensors"
    assert main([*common, "--no-calib", "--out", str(plain)]) == 0
    from yoloslim.models.io import load_model

    a, b = load_model(out)[0].state_dict(), load_model(plain)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the file holds the un-recalibrated cut
    forced, js2 = tmp_path / "forced.safetensors", tmp_path / "r2.json"
    assert main([*common, "--calib", str(tiny_data), "--out", str(forced), "--json", str(js2)]) == 0
    assert json.loads(js2.read_text())["calib"]["kept"] is True
    assert "calib_kept" not in read_info(forced).history[-1]
