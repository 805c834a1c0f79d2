"""evaluate() and `yoloslim val`: the whole path from loader to metrics and files."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from yoloslim.cli import main
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.engine.evaluate import evaluate
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, save_model
from yoloslim.models.spec import ArchSpec


class _Oracle(nn.Module):
    """Raw maps (anchor-free decoding, stride 8) that decode to the ground truth of each image.

    It reads the boxes of the loader's images in order and maps them into the letterbox, so a
    perfect score proves that evaluate() pairs images, letterbox info and boxes correctly.
    """

    def __init__(self, dataset: DetectionDataset, nc: int) -> None:
        super().__init__()
        self.spec = ArchSpec(family="yolox", name="oracle", nc=nc, strides=[8],
                             options={"decode": "anchor_free"})
        self.dataset, self.nc, self.next = dataset, nc, 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        raw = torch.full((b, 5 + self.nc, h // 8, w // 8), -30.0)
        if not x.any():  # evaluate()'s warm-up call on a blank image
            return [raw]
        for k in range(b):
            i = self.next
            self.next += 1
            s, info = self.dataset.samples[i], self.dataset.info(i)
            cells = [(r, c) for r in range(h // 8) for c in range(w // 8)]
            for (x1, y1, x2, y2), cls, cell in zip(s.boxes.tolist(), s.classes.tolist(), cells, strict=False):
                x1, x2 = x1 * info.ratio + info.pad_w, x2 * info.ratio + info.pad_w
                y1, y2 = y1 * info.ratio + info.pad_h, y2 * info.ratio + info.pad_h
                gy, gx = cell
                raw[k, 0, gy, gx] = (x1 + x2) / 2 / 8 - gx
                raw[k, 1, gy, gx] = (y1 + y2) / 2 / 8 - gy
                raw[k, 2, gy, gx] = math.log((x2 - x1) / 8)
                raw[k, 3, gy, gx] = math.log((y2 - y1) / 8)
                raw[k, 4, gy, gx] = 30.0
                raw[k, 5 + cls, gy, gx] = 30.0
        return [raw]


def test_evaluate_perfect_oracle(tiny_data: Path, tmp_path: Path) -> None:
    source = load_data(tiny_data)
    ds = DetectionDataset(source.splits["val"], 64)  # 96 px images letterboxed to 64: ratio 2/3
    loader = create_loader(ds, batch_size=3, shuffle=False, workers=0)
    calls = []

    def loss_fn(raw, targets):
        calls.append(len(targets))
        return torch.tensor(2.0), {"box": torch.tensor(0.5), "obj": torch.tensor(1.5)}

    res = evaluate(_Oracle(ds, len(source.names)), loader, source.names, save_json_dir=tmp_path / "coco",
                   loss_fn=loss_fn, progress=False)
    m = res.metrics
    assert m.images == len(ds) and m.instances == sum(len(s.classes) for s in ds.samples)
    assert m.map50 == pytest.approx(1.0) and m.map == pytest.approx(1.0)
    assert m.precision == pytest.approx(1.0) and m.recall == pytest.approx(1.0)
    assert set(res.speed_ms) == {"preprocess", "inference", "nms"}
    assert all(v >= 0 for v in res.speed_ms.values())
    assert res.losses == {"box": 0.5, "obj": 1.5} and sum(calls) == m.instances
    gt = json.loads((tmp_path / "coco" / "ground_truth.json").read_text())
    assert len(gt["images"]) == len(ds) and len(gt["annotations"]) == m.instances


def _checkpoint(tmp_path: Path, names: list[str]) -> Path:
    model = create_model("yolov5n", nc=len(names))
    return save_model(tmp_path / "random.safetensors", model, ModelInfo(model.spec, names, imgsz=96))


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["val", *args])
    return rc, out.getvalue(), err.getvalue()


def test_val_cli_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    names = load_data(tiny_data).names
    ckpt = _checkpoint(tmp_path, names)
    rc, out, _ = _run("--weights", str(ckpt), "--data", str(tiny_data), "--imgsz", "64", "--batch", "4",
                      "--workers", "0", "--json", str(tmp_path / "val.json"),
                      "--save-json", str(tmp_path / "coco"))
    assert rc == 0
    assert "mAP50-95" in out and "Speed:" in out and out.count("\n") >= len(names) + 2
    summary = json.loads((tmp_path / "val.json").read_text())
    assert {"map50", "map", "precision", "recall", "per_class", "speed_ms"} <= set(summary)
    assert set(summary["per_class"]) == set(names)
    assert set(summary["speed_ms"]) == {"preprocess", "inference", "nms"}
    assert 0 <= summary["map"] <= summary["map50"] <= 1
    preds = json.loads((tmp_path / "coco" / "predictions.json").read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} == set(preds[0])
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "coco" / "ground_truth.json"))
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "coco" / "predictions.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert abs(ev.stats[0] - summary["map"]) < 1e-4 and abs(ev.stats[1] - summary["map50"]) < 1e-4


def test_val_bad_inputs(tiny_data: Path, tmp_path: Path) -> None:
    names = load_data(tiny_data).names
    ckpt = _checkpoint(tmp_path, names)
    rc, _, err = _run("--weights", str(tmp_path / "missing.safetensors"), "--data", str(tiny_data))
    assert rc == 2 and err.count("\n") == 1 and "missing.safetensors" in err
    rc, _, err = _run("--weights", str(ckpt), "--data", str(tiny_data), "--split", "test")
    assert rc == 2 and "split" in err
    rc, _, err = _run("--weights", str(ckpt), "--data", str(tiny_data), "--imgsz", "70")
    assert rc == 2 and "multiple of 32" in err
    # the same data set without any label files
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(tiny_data.parent, unlabelled)
    shutil.rmtree(unlabelled / "labels")
    yaml_text = tiny_data.read_text().replace(str(tiny_data.parent), str(unlabelled))
    (unlabelled / "data.yaml").write_text(yaml_text)
    rc, _, err = _run("--weights", str(ckpt), "--data", str(unlabelled / "data.yaml"), "--workers", "0")
    assert rc == 2 and "no labelled objects" in err
    # a model with another number of classes
    other = _checkpoint(tmp_path / "other", names[:2])
    rc, _, err = _run("--weights", str(other), "--data", str(tiny_data), "--workers", "0")
    assert rc == 2 and "classes" in err


def test_val_bootstrap_and_against_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    names = load_data(tiny_data).names
    ckpt = _checkpoint(tmp_path, names)
    rc, out, _ = _run("--weights", str(ckpt), "--data", str(tiny_data), "--imgsz", "64", "--batch", "4",
                      "--workers", "0", "--bootstrap", "50", "--against", str(ckpt),
                      "--json", str(tmp_path / "val.json"))
    assert rc == 0
    summary = json.loads((tmp_path / "val.json").read_text())
    ci = summary["bootstrap"]["map"]
    assert ci["rounds"] == 50 and ci["low"] <= ci["high"] and ci["value"] == pytest.approx(summary["map"])
    against = summary["against"]  # the model against itself: no difference on any draw
    assert against["weights"] == str(ckpt) and against["map"] == pytest.approx(summary["map"])
    assert against["delta_points"] == {"map50": 0.0, "map": 0.0}
    assert against["bootstrap"]["map"]["low"] == against["bootstrap"]["map"]["high"] == 0.0
    assert "95 % intervals over 50 draws of the" in out and f"Against {ckpt}" in out
    rc, _, err = _run("--weights", str(ckpt), "--data", str(tiny_data), "--bootstrap", "-5")
    assert rc == 2 and "--bootstrap" in err
    rc, _, err = _run("--weights", str(ckpt), "--data", str(tiny_data), "--against", str(tmp_path / "no.safetensors"))
    assert rc == 2 and "--against" in err and err.count("\n") == 1


def test_val_against_reports_a_worse_model_with_its_paired_interval(capsys: pytest.CaptureFixture[str]) -> None:
    from yoloslim.engine.evaluate import EvalResult
    from yoloslim.engine.metrics import DetectionMetrics
    from yoloslim.workflows.val import _compare

    rng = np.random.default_rng(0)
    good, bad = DetectionMetrics(["a", "b"]), DetectionMetrics(["a", "b"])
    for i in range(60):
        xy = rng.uniform(0, 200, (3, 2))
        gt, cls = np.concatenate((xy, xy + 40), 1), rng.integers(0, 2, 3)
        good.add(i, gt, cls, None, gt + 1, np.full(3, 0.9), cls)
        miss = rng.random(3) < 0.5  # the worse model misses about half the objects
        bad.add(i, gt, cls, None, gt[~miss] + 1, np.full(int((~miss).sum()), 0.9), cls[~miss])
    result = {k: EvalResult(metrics=m.compute(), detections=m) for k, m in (("good", good), ("bad", bad))}
    out = _compare(result["bad"], "good.safetensors", lambda path: result["good"], 300)
    iv = out["against"]["bootstrap"]["map"]
    assert out["against"]["delta_points"]["map"] == pytest.approx(iv["value"], abs=1e-3)
    assert iv["value"] < -30 and iv["low"] < iv["value"] < iv["high"] < 0 and iv["above_zero"] == 0
    printed = capsys.readouterr().out
    assert f"Δ mAP50-95 {iv['value']:+.1f} points" in printed and "paired 95 % intervals" in printed
