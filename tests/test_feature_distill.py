"""Feature imitation: the head features of every family, CWD, adapters, training and resume with it."""

import csv

import pytest
import torch
from safetensors.torch import load_file

from helpers import randomize_bn, train_interrupted_in_second_epoch
from yoloslim.cli import main
from yoloslim.data.synth import CLASSES
from yoloslim.engine.train import TrainConfig, train
from yoloslim.engine.train_state import load_state
from yoloslim.loss.distill import DistillLoss
from yoloslim.loss.feature_distill import FeatureTap, channel_wise_divergence, head_feature_convs
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, read_info, save_model


def _input(model, seed=0):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return x * 255 if model.spec.input_scale == 1.0 else x  # (2, 3, 64, 64) as the model takes it


# the features the head reads: the neck's output per level (YOLOv5, YOLOv3), the last features of the two
# branches per level (YOLOX: reg and obj read one tensor; YOLOv8: box and class branches)
@pytest.mark.parametrize("name, count", [("yolov5n", 3), ("yolov3-tiny", 2), ("yolox-nano", 6), ("yolov8n", 6)])
def test_the_tap_records_each_feature_the_head_reads_once(name, count):
    model = create_model(name, nc=3)
    positions = head_feature_convs(model, 64)
    assert len(positions) == count
    tap = FeatureTap(model, positions)
    model(_input(model))
    feats = tap.features()
    assert [f.shape[1] for f in feats] == [c.in_channels for c in tap.convs]
    assert len({id(f) for f in feats}) == count
    tap.clear()
    with pytest.raises(RuntimeError, match="has not run"):
        tap.features()
    tap.close()
    model(_input(model))
    with pytest.raises(RuntimeError, match="has not run"):
        tap.features()  # the hooks are gone


def test_channel_wise_divergence():
    t = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    assert float(channel_wise_divergence(t, t)) == pytest.approx(0.0, abs=1e-6)
    # a channel is a distribution over the locations: a constant added per channel changes nothing
    assert float(channel_wise_divergence(t + torch.randn(2, 4, 1, 1), t)) == pytest.approx(0.0, abs=1e-5)
    s = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(1))
    assert float(channel_wise_divergence(s, t)) > 0.1


def test_a_narrower_student_learns_to_imitate_the_teachers_features():
    torch.manual_seed(0)
    teacher = randomize_bn(create_model("yolov5s", nc=3), seed=0).eval()
    student = randomize_bn(create_model("yolov5n", nc=3), seed=1)  # half the channels at every head input
    kd = DistillLoss(teacher, 0.0, student=student, feature_weight=1.0)
    assert [(a.in_channels, a.out_channels) for a in kd.imitation.adapters] == [(64, 128), (128, 256), (256, 512)]
    opt = torch.optim.Adam([*student.parameters(), *kd.imitation.parameters()], lr=1e-3)
    x = _input(student)
    losses = []
    for _ in range(30):
        loss, items = kd(student(x), x)
        assert float(loss.detach()) == pytest.approx(float(items["feat"]) * 2, rel=1e-5)  # weight 1 × batch 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(items["feat"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())


def _save(tmp_path, name, seed):
    model = randomize_bn(create_model(name, nc=8), seed=seed)
    return str(save_model(tmp_path / f"{name}_{seed}.safetensors", model, ModelInfo(model.spec, list(CLASSES), 64)))


def test_training_with_feature_imitation_resumes_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    teacher, student = _save(tmp_path, "yolov5s", 0), _save(tmp_path, "yolov5n", 1)

    def cfg(out):
        return TrainConfig(data=str(tiny_data), weights=student, teacher=teacher, distill_features=0.5, epochs=2,
                           batch=4, imgsz=64, workers=0, nominal_batch=8, seed=3, plots=False, out=str(out))

    straight = train(cfg(tmp_path / "a"))
    with open(tmp_path / "a" / "results.csv", newline="") as f:
        feat = [float(r["train/feat"]) for r in csv.DictReader(f)]
    assert len(feat) == 2 and all(v > 0 for v in feat)
    event = read_info(straight.last).history[-1]
    assert event["distill_features"] == 0.5
    assert not any("adapter" in k for k in load_file(straight.last))  # the adapters stay out of the model file

    train_interrupted_in_second_epoch(monkeypatch, cfg(tmp_path / "b"))
    state = load_state(tmp_path / "b" / "weights" / "last_state.pt")
    assert {k.split(".")[0] for k in state["feature_adapters"]} == {"adapters"}
    assert len(state["optimizer"]["param_groups"]) == 4  # bias, weights, norms, adapters
    resumed = train(TrainConfig(resume=str(tmp_path / "b"), workers=0))
    a, b = load_file(straight.last), load_file(resumed.last)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_feature_imitation_needs_a_teacher_and_a_weight_of_zero_or_more(tiny_data, tmp_path, capsys):
    student = _save(tmp_path, "yolov5n", 1)
    common = ["train", "--data", str(tiny_data), "--weights", student, "--epochs", "1", "--imgsz", "64",
              "--workers", "0"]
    assert main([*common, "--distill-features", "1", "--out", str(tmp_path / "x")]) == 2
    assert main([*common, "--teacher", student, "--distill-features", "-1", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --distill-features imitates a teacher's features: give --teacher MODEL too",
                   "error: --distill-features must be >= 0 (0: none), got -1.0"]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
