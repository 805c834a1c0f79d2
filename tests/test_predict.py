"""predict: annotated images / video and YOLO txt files; fused and ONNX Runtime give the same detections."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from yoloslim.cli import main
from yoloslim.deploy.predict import Detections, Predictor
from yoloslim.deploy.sources import open_source
from yoloslim.errors import UserError
from yoloslim.models import build_model, model_spec
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.workflows.predict import predict

NAMES = ["cat", "dog", "bird"]
SIZES = {"a.jpg": (80, 120), "b.PNG": (100, 60), "c.JPEG": (64, 64)}  # name: (h, w)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), (20, 200, 40), -1)
    return img


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = build_model(model_spec("yolov5n", nc=3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random BN statistics and a head that fires
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for conv in model.head_convs:
            conv.weight.mul_(20)
            conv.bias.view(3, -1)[:, 4:] = 1.0
    weights = d / "tiny.safetensors"
    save_model(weights, model, ModelInfo(model.spec, NAMES, imgsz=64))
    folder = d / "images"
    folder.mkdir()
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        cv2.imwrite(str(folder / name), _image(h, w, i))
    (folder / "notes.txt").write_text("not an image")
    video = d / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 72))
    for i in range(5):
        writer.write(_image(72, 96, 10 + i))
    writer.release()
    return weights, folder, video


def assert_same_detections(a: dict, b: dict, box_tol: float = 2e-3, score_tol: float = 1e-4) -> None:
    """Every detection of ``a`` has its own twin in ``b`` (same class, box and score within tolerance).

    Matched as sets: the order of detections with (nearly) tied scores is not part of the result.
    """
    rows_a = np.column_stack([np.asarray(a["boxes"]).reshape(-1, 4), a["scores"], a["classes"]])
    rows_b = np.column_stack([np.asarray(b["boxes"]).reshape(-1, 4), b["scores"], b["classes"]])
    assert rows_a.shape == rows_b.shape
    free = np.ones(len(rows_b), bool)
    for r in rows_a:
        ok = free & (rows_b[:, 5] == r[5]) & (np.abs(rows_b[:, 4] - r[4]) <= score_tol) \
            & (np.abs(rows_b[:, :4] - r[:4]).max(1) <= box_tol)
        assert ok.any(), f"no twin for detection {r.tolist()}"
        free[np.flatnonzero(ok)[0]] = False


def test_predict_image_writes_annotated_image_and_txt(setup, tmp_path, capsys):
    weights, folder, _ = setup
    out = tmp_path / "out"
    js = tmp_path / "p.json"
    assert main(["predict", "--weights", str(weights), "--source", str(folder / "a.jpg"), "--conf", "0.65",
                 "--save-txt", "--out", str(out), "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(js.read_text())
    assert summary["frames"] == 1 and summary["kind"] == "image"
    n = summary["detections"]
    assert 0 < n <= 300
    annotated = cv2.imread(str(out / "a.jpg"))
    assert annotated.shape == (80, 120, 3)
    original = cv2.imread(str(folder / "a.jpg"))
    assert np.abs(annotated.astype(int) - original.astype(int)).max() > 50  # boxes drawn
    lines = (out / "labels" / "a.txt").read_text().splitlines()
    assert len(lines) == n
    rows = np.array([[float(v) for v in line.split()] for line in lines])
    assert rows.shape == (n, 6)
    assert set(rows[:, 0].astype(int)) <= {0, 1, 2}
    assert rows[:, 1:5].min() >= 0 and rows[:, 1:5].max() <= 1 and (rows[:, 5] > 0.65).all()
    r = summary["results"][0]
    b = np.asarray(r["boxes"])
    np.testing.assert_allclose(rows[:, 1], (b[:, 0] + b[:, 2]) / 2 / 120, atol=1e-4)  # cx normalised by width
    np.testing.assert_allclose(rows[:, 4], (b[:, 3] - b[:, 1]) / 80, atol=1e-4)  # h normalised by height
    assert "a.jpg (120x80): " in printed and NAMES[r["classes"][0]] in printed


def test_predict_folder_annotates_every_image_and_fused_is_identical(setup, tmp_path):
    weights, folder, _ = setup
    plain = predict(str(folder), str(weights), conf=0.65, out=str(tmp_path / "plain"), progress=False)
    fused = predict(str(folder), str(weights), conf=0.65, fuse=True, save_txt=True,
                    out=str(tmp_path / "fused"), progress=False)
    assert plain["frames"] == fused["frames"] == 3  # notes.txt is not an image
    for name, (h, w) in SIZES.items():
        assert cv2.imread(str(tmp_path / "fused" / name)).shape == (h, w, 3)
        assert (tmp_path / "fused" / "labels" / f"{name.rsplit('.', 1)[0]}.txt").is_file()
    assert plain["detections"] == fused["detections"] > 0
    for a, b in zip(plain["results"], fused["results"], strict=True):
        assert_same_detections(a, b)


def test_predict_video_writes_video_and_reports_fps(setup, tmp_path, capsys):
    weights, _, video = setup
    out = tmp_path / "vid"
    s = predict(str(video), str(weights), conf=0.65, save_txt=True, out=str(out), progress=False)
    assert s["kind"] == "video" and s["frames"] == 5 and s["fps"] > 0
    assert "sustained" in capsys.readouterr().out
    written = out / "clip.mp4" if (out / "clip.mp4").is_file() else out / "clip.avi"
    cap = cv2.VideoCapture(str(written))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (72, 96, 3)
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"clip_{i}.txt" for i in range(5)]


@pytest.mark.slow
def test_onnxruntime_backend_gives_the_same_detections(setup, tmp_path):
    weights, folder, _ = setup
    onnx_file = tmp_path / "tiny.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(onnx_file)]) == 0
    image = str(folder / "b.PNG")
    ref = predict(image, str(weights), conf=0.65, out=str(tmp_path / "t"), progress=False)
    got = predict(image, None, conf=0.65, backend="onnxruntime", onnx=str(onnx_file),
                  out=str(tmp_path / "o"), progress=False)
    assert got["detections"] == ref["detections"] > 0
    for a, b in zip(ref["results"], got["results"], strict=True):
        assert_same_detections(a, b)
    with pytest.raises(UserError, match="exported for 64x64"):
        predict(image, None, imgsz=96, backend="onnxruntime", onnx=str(onnx_file),
                out=str(tmp_path / "x"), progress=False)


def test_predictor_maps_boxes_to_original_pixels(setup):
    weights, folder, _ = setup
    model, _ = load_model(weights)
    det = Predictor(model, imgsz=64, conf=0.6)(cv2.imread(str(folder / "b.PNG")))
    assert isinstance(det, Detections) and len(det) > 0
    assert (det.width, det.height) == (60, 100)
    assert det.boxes[:, [0, 2]].max() <= 60 and det.boxes[:, [1, 3]].max() <= 100 and det.boxes.min() >= 0


def test_sources(setup, tmp_path):
    _, folder, video = setup
    assert open_source(str(folder)).total == 3
    assert [f.name for f in open_source(str(folder))] == ["a.jpg", "b.PNG", "c.JPEG"]
    src = open_source(str(video))
    assert src.kind == "video" and [f.index for f in src] == [0, 1, 2, 3, 4]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        open_source(str(tmp_path / "empty"))


@pytest.mark.parametrize("source,args,message", [
    ("missing.jpg", [], "no such image, folder, video or camera id"),
    ("notes", [], "not an image or video file"),
    ("97", [], "camera 97 cannot be opened"),
    ("folder", ["--imgsz", "70"], "multiple of 32"),
    ("folder", ["--conf", "1.5"], "--conf and --iou must be in 0..1"),
    ("folder", ["--backend", "onnxruntime"], "no exported file"),
])
def test_bad_predict_input_is_one_line_exit_2(setup, tmp_path, source, args, message, capsys):
    weights, folder, _ = setup
    src = {"folder": str(folder), "notes": str(folder / "notes.txt")}.get(source, str(tmp_path / source))
    if source == "97":
        src = "97"
    argv = ["predict", "--weights", str(weights), "--source", src, "--out", str(tmp_path / "o"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
