"""``export --layout ultralytics``: the output tensor of ultralytics' own ONNX export, for every family.

Their detect file takes ``images`` RGB in 0..1 and returns ``output0`` ``(batch, 4 + nc, N)``: boxes
``cx, cy, w, h`` in input pixels, then one score per class. Ours must equal the yoloslim layout's
numbers rearranged (score = objectness × class probability), whatever the family's own input convention.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from test_export import lively
from yoloslim.cli import main
from yoloslim.deploy.onnx_export import OnnxModel, read_metadata
from yoloslim.deploy.predict import Predictor
from yoloslim.errors import UserError
from yoloslim.models import build_model, model_spec
from yoloslim.models.decode import DecodedModel
from yoloslim.models.io import ModelInfo, save_model
from yoloslim.workflows.export import export

NAMES = ["cat", "dog", "bird"]


def _weights(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(model_spec(name, nc=3))
    if name.startswith("yolov5"):
        model = lively(model)
    else:  # YOLOX: class and objectness priors of 0.5 instead of 0.01, so the scores are not all 1e-4
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.startswith(("head.cls_preds", "head.obj_preds")) and n.endswith("bias"):
                    p.zero_()
        model.eval()
    path = tmp_path / f"{name}.safetensors"
    save_model(path, model, ModelInfo(model.spec, NAMES, imgsz=64))
    return model, path


def _ultralytics_rows(model, rgb01):
    """What the file must compute, from our decoded rows: (b, 4 + nc, N)."""
    spec = model.spec
    x = rgb01.flip(1) if spec.input_bgr else rgb01
    x = x * (255 * spec.input_scale)
    with torch.no_grad():
        rows = DecodedModel(model).eval()(x)  # (b, N, 5 + nc)
    return torch.cat((rows[..., :4], rows[..., 4:5] * rows[..., 5:]), -1).transpose(1, 2).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov5n", "yolox-nano"])
def test_ultralytics_layout_equals_ours_rearranged(tmp_path, name, capsys):
    model, weights = _weights(tmp_path, name)
    out = tmp_path / f"{name}.onnx"
    js = tmp_path / "e.json"
    argv = ["export", "--weights", str(weights), "--layout", "ultralytics", "--out", str(out), "--json", str(js)]
    assert main(argv) == 0
    assert "ultralytics layout" in capsys.readouterr().out
    assert json.loads(js.read_text())["layout"] == "ultralytics"

    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["output0"]
    n = sum((64 // s) ** 2 for s in model.spec.strides) * (model.spec.num_anchors if model.spec.anchors else 1)
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 4 + 3, n]
    meta = read_metadata(out)
    assert (meta["input_channels"], meta["input_range"], meta["layout"]) == ("RGB", "0..1", "ultralytics")
    assert meta["task"] == "detect" and json.loads(meta["names"]) == NAMES

    rgb01 = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(1)).float() / 255
    got = OnnxModel(out).session.run(["output0"], {"images": rgb01.numpy()})[0]
    want = _ultralytics_rows(model, rgb01)
    assert got.shape == want.shape == (1, 7, n)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert float(want[:, 4:].max()) > 0.01  # the scores are not all zero: the comparison means something


@pytest.mark.slow
def test_ultralytics_layout_predicts_the_same_detections(tmp_path):
    model, weights = _weights(tmp_path, "yolov5n")
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    export(str(weights), out=str(ours))
    export(str(weights), out=str(theirs), layout="ultralytics", dynamic=True)
    dims = onnx.load(str(theirs)).graph.output[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value, dims[2].dim_param) == ("batch", 7, "anchors")
    img = np.random.default_rng(0).integers(0, 256, (80, 64, 3), dtype=np.uint8)
    a = Predictor(onnx=ours, imgsz=64, conf=0.05)(img)
    b = Predictor(onnx=theirs, imgsz=64, conf=0.05)(img)
    assert len(a.boxes) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.classes, b.classes)


def test_ultralytics_layout_refuses_nms_and_darknet(tmp_path):
    _, weights = _weights(tmp_path, "yolov5n")
    with pytest.raises(UserError, match="without --nms"):
        export(str(weights), out=str(tmp_path / "a.onnx"), layout="ultralytics", nms=True)
    with pytest.raises(UserError, match="unknown --layout 'tf'"):
        export(str(weights), out=str(tmp_path / "a.onnx"), layout="tf")
    with pytest.raises(UserError, match="--layout is for --format onnx"):
        export(str(weights), format="darknet", layout="ultralytics")
    assert not (tmp_path / "a.onnx").exists()
