"""The pictures of a run: each is written, is a valid image of sensible size, and draws the run's numbers."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import yoloslim.workflows.train as wf
from yoloslim.cli import main
from yoloslim.data.dataset import load_data
from yoloslim.engine.confusion import ConfusionMatrix
from yoloslim.engine.evaluate import EvalResult
from yoloslim.engine.metrics import DetectionMetrics
from yoloslim.engine.run_files import ResultsCSV
from yoloslim.engine.train import TrainConfig, TrainResult
from yoloslim.hyp import Hyp
from yoloslim.viz.plots import plot_labels, plot_results, read_results
from yoloslim.viz.run_plots import write_val_plots

VAL_FILES = ["F1_curve.png", "PR_curve.png", "confusion_matrix.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header; fails unless it is a PNG."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_picture(path: Path, min_side: int = 300, max_side: int = 4000) -> None:
    """A readable image whose sides are sensible, and not one flat colour."""
    if path.suffix == ".png":
        w, h = png_size(path)
        assert min_side <= min(w, h) and max(w, h) <= max_side, (path, w, h)
    img = cv2.imread(str(path))
    assert img is not None and min(img.shape[:2]) >= min_side and img.std() > 5, path


def _evaluation(samples, nc: int, wrong: bool = True) -> tuple[EvalResult, np.ndarray]:
    """Detections equal to the ground truth, except (``wrong``) a wrong class on image 0, a miss on image 1
    and a false alarm on image 2; also a low-confidence box everywhere (below the plots' 0.25). Returns the
    result and the confusion matrix these edits must give."""
    det = DetectionMetrics([str(k) for k in range(nc)])
    want = np.zeros((nc + 1, nc + 1), np.int64)
    for i, s in enumerate(samples):
        boxes, cls = s.boxes.astype(np.float64), s.classes.copy()
        pred_cls = cls.copy()
        for c in cls:
            want[c, c] += 1
        if wrong and i == 0:
            pred_cls[0] = (cls[0] + 1) % nc
            want[cls[0], cls[0]] -= 1
            want[pred_cls[0], cls[0]] += 1
        if wrong and i == 1:
            want[cls[0], cls[0]] -= 1
            want[nc, cls[0]] += 1
            boxes_d, cls_d = boxes[1:], pred_cls[1:]
        else:
            boxes_d, cls_d = boxes, pred_cls
        scores = np.linspace(0.9, 0.6, len(cls_d)) if len(cls_d) else np.zeros(0)
        if wrong and i == 2:  # a box far from every object: far off the image
            boxes_d = np.concatenate((boxes_d, [[s.width + 50, s.height + 50, s.width + 60, s.height + 60]]))
            cls_d = np.append(cls_d, 0)
            scores = np.append(scores, 0.8)
            want[0, nc] += 1
        boxes_d = np.concatenate((boxes_d, [[0, 0, 4, 4]]))  # below the confusion matrix's confidence
        cls_d = np.append(cls_d, 1)
        scores = np.append(scores, 0.1)
        det.add(i, boxes, cls, s.difficult, boxes_d, scores, cls_d, width=s.width, height=s.height)
    return EvalResult(metrics=det.compute(), detections=det), want


def test_val_plots_draw_the_evaluation(tiny_data, tmp_path):
    source = load_data(tiny_data)
    samples, nc = source.splits["val"], len(source.names)
    result, want = _evaluation(samples, nc)
    drawn = write_val_plots(tmp_path / "a", result, samples)
    assert sorted(drawn) == VAL_FILES and sorted(p.name for p in (tmp_path / "a").iterdir()) == VAL_FILES
    for name in VAL_FILES:
        assert_picture(tmp_path / "a" / name)

    cm = drawn["confusion_matrix.png"]
    assert np.array_equal(cm["matrix"], want) and cm["labels"][-1] == "background"
    pr = drawn["PR_curve.png"]
    m = result.metrics
    assert pr["map50"] == pytest.approx(m.map50, abs=1e-12)
    assert pr["ap50"] == pytest.approx({k: v["ap50"] for k, v in m.per_class.items() if v["ap50"] is not None})
    f1 = drawn["F1_curve.png"]
    curves = result.detections.curves()
    assert f1["mean_f1"] == pytest.approx(curves.f1[curves.valid].mean(0).tolist())
    # P and R of the metrics are read off the same curves
    i = int(np.argmin(np.abs(curves.conf - m.conf)))
    assert curves.precision[curves.valid, i].mean() == pytest.approx(m.precision)
    imgs = drawn["val_batch0_pred.jpg"]
    assert imgs["images"] == [s.path.name for s in samples][:16]
    assert imgs["boxes"] == [len(s.classes) for s in samples][:16]
    assert imgs["detections"][:3] == [len(samples[0].classes), len(samples[1].classes) - 1,
                                      len(samples[2].classes) + 1]  # the 0.1 boxes are not drawn

    # a perfect evaluation draws other numbers, and other pictures
    perfect, want = _evaluation(samples, nc, wrong=False)
    other = write_val_plots(tmp_path / "b", perfect, samples)
    assert np.array_equal(other["confusion_matrix.png"]["matrix"], want) and np.trace(want) == want.sum()
    assert other["PR_curve.png"]["map50"] == pytest.approx(1.0) and pr["map50"] < 0.99
    for name in VAL_FILES:  # the ground truth is the same; all the rest differs
        same = (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert same == (name == "val_batch0_labels.jpg"), name


def test_confusion_matrix_rules():
    cm = ConfusionMatrix(2)
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]])
    # two detections on object 0 (the better one matches, the other is a false alarm), object 1 found with the
    # wrong class, object 2 missed, and object 0 of a second call on an ignored object: not counted
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30.0]])
    cm.add(gt, [0, 1, 1], det, [0.9, 0.8, 0.7], [0, 0, 0])
    cm.add(gt[:1], [1], det[:1], [0.9], [0], gt_ignore=[True])
    assert cm.matrix.tolist() == [[1, 1, 1],
                                  [0, 0, 0],
                                  [0, 1, 0]]


def test_results_png_draws_results_csv(tmp_path):
    def run(path, scale):
        csv = ResultsCSV(path)
        for e in range(1, 4):
            validated = e != 2  # a blank row: not validated that epoch
            csv.add({"epoch": e, "train/box": scale / e, "train/obj": 0.5 * scale / e,
                     "metrics/precision": 0.1 * e if validated else "", "metrics/recall": 0.2 * e if validated else "",
                     "metrics/mAP50": 0.05 * e * scale if validated else "",
                     "metrics/mAP50-95": 0.03 * e if validated else "", "val/box": scale / (e + 1) if validated else "",
                     "lr/weight": 0.01})
        return read_results(path)

    cols = run(tmp_path / "a.csv", 1.0)
    drawn = plot_results(tmp_path / "a.csv", tmp_path / "a.png")
    assert_picture(tmp_path / "a.png")
    assert list(drawn) == ["epoch", "train/box", "train/obj", "metrics/precision", "metrics/recall", "val/box",
                           "metrics/mAP50", "metrics/mAP50-95"]  # lr is not a panel
    for k, v in drawn.items():
        np.testing.assert_array_equal(v, cols[k])
    assert np.isnan(drawn["metrics/mAP50"][1]) and drawn["metrics/mAP50"][2] == pytest.approx(0.15)
    run(tmp_path / "b.csv", 2.0)
    other = plot_results(tmp_path / "b.csv", tmp_path / "b.png")
    assert other["train/box"] != drawn["train/box"]
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_labels_png_counts_the_labels(tiny_data, tmp_path):
    source = load_data(tiny_data)
    samples = source.splits["train"]
    drawn = plot_labels(samples, source.names, tmp_path / "labels.png")
    assert_picture(tmp_path / "labels.png")
    all_cls = np.concatenate([s.classes for s in samples])
    assert list(drawn["counts"].values()) == np.bincount(all_cls, minlength=len(source.names)).tolist()
    s = samples[0]
    b = s.boxes[0]
    assert drawn["centres"][0] == pytest.approx([(b[0] + b[2]) / 2 / s.width, (b[1] + b[3]) / 2 / s.height])
    assert drawn["sizes"][0] == pytest.approx([(b[2] - b[0]) / s.width, (b[3] - b[1]) / s.height])
    assert len(drawn["centres"]) == len(all_cls)
    other = plot_labels(source.splits["val"], source.names, tmp_path / "val_labels.png")
    assert other["counts"] != drawn["counts"]
    assert (tmp_path / "labels.png").read_bytes() != (tmp_path / "val_labels.png").read_bytes()


@pytest.mark.slow
def test_training_leaves_its_pictures_and_args_and_val_plots_them_too(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--epochs", "2", "--batch", "4",
                 "--imgsz", "64", "--workers", "0", "--seed", "3", "--out", str(run)]) == 0
    for name in ["results.png", "labels.png", *VAL_FILES]:
        assert_picture(run / name)
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert set(args) == {"config", "hyp"}
    assert set(args["config"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert args["config"]["epochs"] == 2 and args["config"]["imgsz"] == 64 and args["config"]["seed"] == 3
    assert args["hyp"] == Hyp().to_dict()
    out = tmp_path / "val"
    assert main(["val", "--weights", str(run / "weights" / "best.safetensors"), "--data", str(tiny_data),
                 "--imgsz", "64", "--workers", "0", "--plots", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == VAL_FILES and "Pictures:" in capsys.readouterr().out


def test_no_plots_flag_reaches_the_config(tiny_data, tmp_path, monkeypatch):
    seen = []

    def fake(cfg):
        seen.append(cfg)
        return TrainResult(tmp_path / "best", tmp_path / "last", tmp_path)

    monkeypatch.setattr(wf, "run_training", fake)
    base = ["train", "--data", str(tiny_data), "--model", "yolov5n", "--epochs", "1"]
    assert main(base) == 0 and main([*base, "--no-plots"]) == 0
    assert [c.plots for c in seen] == [True, False]
