"""Knowledge distillation: the loss per head type, the teacher check, label-free training, resume."""

import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import randomize_bn, train_interrupted_in_second_epoch
from yoloslim.cli import main
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.data.synth import CLASSES
from yoloslim.engine.train import TrainConfig, train
from yoloslim.engine.train_state import load_state
from yoloslim.errors import UserError
from yoloslim.loss.distill import DistillLoss
from yoloslim.models import build_model, create_model, model_spec
from yoloslim.models.decode import preprocess
from yoloslim.models.io import ModelInfo, load_model, read_info, save_model


def _input(model, seed=0):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return x * 255 if model.spec.input_scale == 1.0 else x  # (2, 3, 64, 64) as the model takes it


@pytest.mark.parametrize("name, detection, terms", [
    ("yolov5n", True, {"obj", "box", "cls"}), ("yolov3-tiny", True, {"obj", "box", "cls"}),
    ("yolox-nano", True, {"box", "cls"}),  # YOLOX on labels: its objectness is not distilled
    ("yolox-nano", False, {"obj", "box", "cls"}),  # label-free: the only objectness signal
    ("yolov8n", True, {"box", "cls"}), ("yolov5n", False, {"obj", "box", "cls"})])
def test_distill_loss_is_zero_against_itself_and_positive_against_another_model(name, detection, terms):
    teacher = randomize_bn(create_model(name, nc=3), seed=0)
    x = _input(teacher)
    with torch.no_grad():
        loss, items = DistillLoss(teacher, 1.0, detection=detection)(copy.deepcopy(teacher)(x), x)
    assert float(loss) == 0.0 and float(items["distill"]) == 0.0

    student = randomize_bn(create_model(name, nc=3), seed=1).requires_grad_(True)
    kd = DistillLoss(teacher, 2.0, detection=detection)
    raw = student(x)
    with torch.no_grad():
        distance = {k: float(v) for k, v in kd.distance(raw, x).items()}
    assert set(distance) == terms and all(v > 1e-7 for v in distance.values()), distance
    loss, items = kd(raw, x)
    total = sum(distance.values())
    assert float(items["distill"]) == pytest.approx(total, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(2.0 * total * 2, rel=1e-5)  # weight · distance × batch size
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def _save(tmp_path, name, nc, seed=0, model=None):
    """A model file with the synthetic set's class names (random BN of ``seed``; of ``model`` when given)."""
    model = randomize_bn(model or create_model(name, nc=nc), seed=seed)
    return str(save_model(tmp_path / f"{name}_{nc}_{seed}.safetensors", model,
                          ModelInfo(model.spec, list(CLASSES)[:nc], 64)))


@pytest.mark.parametrize("teacher, what", [(("yolov5n", 3), "class count (3) differs from the student's (8)"),
                                           (("yolox-nano", 8), "family (yolox) differs")])
def test_a_mismatched_teacher_is_refused_with_one_line_before_training(tiny_data, tmp_path, capsys, teacher, what):
    path = _save(tmp_path, *teacher)
    code = main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--teacher", path, "--epochs", "1",
                 "--imgsz", "64", "--workers", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and what in err and err.startswith(f"error: --teacher {path}")
    assert not (tmp_path / "run").exists()


def test_an_image_folder_needs_a_teacher_and_a_weight_needs_a_teacher(tiny_data, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(tiny_data.parent / "images" / "train", folder)
    assert main(["train", "--data", str(folder), "--model", "yolov5n"]) == 2
    assert main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--distill-weight", "2"]) == 2
    err = capsys.readouterr().err
    assert "trains by distillation alone: give --teacher MODEL" in err
    assert "--distill-weight weighs the distillation from a teacher: give --teacher MODEL too" in err


def _distance(student_file, teacher_file, data):
    """Mean distillation distance of a model file to the teacher over the train images of ``data`` (eval mode)."""
    student, _ = load_model(student_file)
    teacher, _ = load_model(teacher_file)
    kd = DistillLoss(teacher, 1.0)
    samples = load_data(data).splits["train"]
    loader = create_loader(DetectionDataset(samples, 64), 8, shuffle=False, workers=0)
    student.eval()
    with torch.no_grad():
        return sum(float(kd(student(x), x)[1]["distill"])
                   for x in (preprocess(imgs, student.spec) for imgs, *_ in loader)) / len(loader)


@pytest.mark.parametrize("name", ["yolov5n", "yolov8n"])
def test_label_free_training_moves_the_student_toward_the_teacher(tiny_data, tmp_path, name):
    folder = tmp_path / "photos"
    shutil.copytree(tiny_data.parent / "images" / "train", folder)  # 16 images, no labels
    model = create_model(name, nc=8)
    teacher = _save(tmp_path, name, 8, seed=0, model=model)
    student = _save(tmp_path, name, 8, seed=1, model=model)  # the teacher's convs, other BN values
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("warmup_epochs: 0\nlr0: 0.02\n")
    result = train(TrainConfig(data=str(folder), weights=student, teacher=teacher, distill_weight=10.0, epochs=3,
                               batch=4, imgsz=64, workers=0, nominal_batch=4, augment=False, hyp=str(hyp), plots=False,
                               out=str(tmp_path / "run")))
    before, after = _distance(student, teacher, tiny_data), _distance(result.last, teacher, tiny_data)
    assert after < 0.6 * before, (before, after)  # measured 0.40 (yolov5n), 0.47 (yolov8n)
    log = (result.run_dir / "yoloslim.log").read_text()
    assert "label-free" in log and "validation is agreement with the teacher" in log
    assert "on 1 held-out image," in log  # every tenth of 16
    assert "map" in result.metrics  # scored against the teacher's detections
    event = read_info(result.last).history[-1]
    assert event["teacher"] == teacher and event["data"] == str(folder)


def test_a_distilled_run_resumes_with_its_teacher(tiny_data, tmp_path, monkeypatch):
    teacher = _save(tmp_path, "yolov5n", 8, seed=0)
    student = _save(tmp_path, "yolov5n", 8, seed=1)

    def cfg(out):
        return TrainConfig(data=str(tiny_data), weights=student, teacher=teacher, distill_weight=2.0, epochs=2,
                           batch=4, imgsz=64, workers=0, nominal_batch=8, seed=3, plots=False, out=str(out))

    straight = train(cfg(tmp_path / "a"))
    train_interrupted_in_second_epoch(monkeypatch, cfg(tmp_path / "b"))
    state = load_state(tmp_path / "b" / "weights" / "last_state.pt")
    assert state["config"]["teacher"] == teacher and state["config"]["distill_weight"] == 2.0
    resumed = train(TrainConfig(resume=str(tmp_path / "b"), workers=0))
    a, b = load_file(straight.last), load_file(resumed.last)
    assert all(torch.equal(a[k], b[k]) for k in a)
    event = read_info(resumed.last).history[-1]
    assert (event["teacher"], event["distill_weight"], event["epochs"]) == (teacher, 2.0, 2)


def test_early_stopped_distillation_runs_the_teacher_in_its_first_epochs_only(tiny_data, tmp_path, monkeypatch):
    teacher = _save(tmp_path, "yolov5n", 8, seed=0)
    student = _save(tmp_path, "yolov5n", 8, seed=1)
    calls = []
    real = DistillLoss.teacher_raw
    monkeypatch.setattr(DistillLoss, "teacher_raw", lambda self, x: calls.append(len(x)) or real(self, x))
    result = train(TrainConfig(data=str(tiny_data), weights=student, teacher=teacher, distill_epochs=1, epochs=3,
                               batch=4, imgsz=64, workers=0, nominal_batch=4, plots=False, val_every_epoch=False,
                               out=str(tmp_path / "run")))
    assert sum(calls) == 16  # one pass over the 16 train images: the first epoch
    rows = (result.run_dir / "results.csv").read_text().splitlines()
    distill = [r.split(",")[rows[0].split(",").index("train/distill")] for r in rows[1:]]
    assert float(distill[0]) > 0 and distill[1:] == ["", ""]
    assert "(weight 1.0, the first 1 epochs)" in (result.run_dir / "yoloslim.log").read_text()
    assert read_info(result.last).history[-1]["distill_epochs"] == 1


def test_distill_epochs_needs_a_teacher_and_labels(tiny_data, tmp_path, capsys):
    teacher = _save(tmp_path, "yolov5n", 8, seed=0)
    folder = tmp_path / "photos"
    shutil.copytree(tiny_data.parent / "images" / "train", folder)
    common = ["--model", "yolov5n", "--epochs", "1", "--imgsz", "64", "--workers", "0"]
    assert main(["train", "--data", str(tiny_data), *common, "--distill-epochs", "1"]) == 2
    assert main(["train", "--data", str(folder), *common, "--teacher", teacher, "--distill-epochs", "1"]) == 2
    assert main(["train", "--data", str(tiny_data), *common, "--teacher", teacher, "--distill-epochs", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--distill-epochs limits the distillation from a teacher: give --teacher MODEL too" in err
    assert "is a folder of images without labels, where distillation is the whole loss" in err
    assert "--distill-epochs must be >= 0" in err


def test_a_teacher_whose_head_differs_in_shape_is_refused_with_one_line():
    teacher = create_model("yolov8n", nc=3)
    spec = model_spec("yolov8n", 3)
    spec.options["reg_max"] = 8  # the same classes and strides, fewer DFL bins: 4·8 + 3 channels per level
    student = build_model(spec)
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(UserError, match=r"--teacher: its head's outputs .* differ from the student's"):
        DistillLoss(teacher, 1.0)(student(x), x)
