"""ONNX export: the file computes what PyTorch computes (static, dynamic, with NMS) and states its input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from yoloslim.cli import main
from yoloslim.deploy import onnx_export
from yoloslim.deploy.onnx_export import OnnxModel, export_onnx, read_metadata, relative_diff
from yoloslim.errors import UserError
from yoloslim.models import build_model, model_spec
from yoloslim.models.decode import DecodedModel, check_input
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.nms import non_max_suppression
from yoloslim.models.profile import count_params

NAMES = ["cat", "dog", "bird"]


def lively(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and a head that fires, so outputs and detections are not all alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        for conv in model.head_convs:
            conv.weight.mul_(20)
            conv.bias.view(model.spec.num_anchors, -1)[:, 4:] = 1.0
    return model.eval()


def torch_decoded(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return DecodedModel(model).eval()(x).numpy()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = lively(build_model(model_spec("yolov5n", nc=3)))
    path = tmp_path_factory.mktemp("export") / "tiny.safetensors"
    save_model(path, model, ModelInfo(model.spec, NAMES, imgsz=64))
    return path


@pytest.mark.slow
def test_static_export_matches_pytorch_and_states_its_input(weights, tmp_path, capsys):
    js = tmp_path / "export.json"
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--json", str(js)]) == 0
    onnx_file = weights.with_suffix(".onnx")  # next to the weights, named after them
    assert onnx_file.is_file()
    assert "max difference" in capsys.readouterr().out
    summary = json.loads(js.read_text())
    assert summary["file"] == str(onnx_file) and summary["imgsz"] == 64
    assert 0 <= summary["max_diff"] <= 1e-4
    meta = read_metadata(onnx_file)
    assert meta["input_channels"] == "RGB" and meta["input_range"] == "0..1"
    assert json.loads(meta["names"]) == NAMES
    assert meta["stride"] == "32" and meta["imgsz"] == "64" and meta["family"] == "yolov5"
    assert meta["yoloslim_version"]

    model, _ = load_model(weights)
    x = check_input(model.spec, 1, 64, 64, seed=5)
    got = OnnxModel(onnx_file)(x).numpy()
    assert got.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 5 + 3)
    assert relative_diff(got, torch_decoded(model, x)) < 1e-4
    with pytest.raises(UserError, match="exported for 64x64"):
        OnnxModel(onnx_file)(check_input(model.spec, 1, 96, 96))


@pytest.mark.slow
def test_dynamic_export_with_nms(weights, tmp_path):
    out = tmp_path / "dyn.onnx"
    assert main(["export", "--weights", str(weights), "--dynamic", "--nms", "--conf", "0.5", "--iou", "0.45",
                 "--max-det", "1000", "--out", str(out)]) == 0
    model, _ = load_model(weights)
    session = OnnxModel(out)
    assert json.loads(session.meta["nms"]) == {"conf": 0.5, "iou": 0.45, "max_det": 1000}
    assert [o.name for o in session.session.get_outputs()] == ["detections", "output"]
    assert session.session.get_outputs()[1].shape == ["batch", "anchors", 8]  # 5 + nc stays a number
    for b, h, w in [(1, 64, 64), (3, 96, 128)]:
        x = check_input(model.spec, b, h, w, seed=b)
        det, raw = session.run(x.numpy())
        ref = torch_decoded(model, x)
        assert raw.shape == ref.shape == (b, 3 * sum((h // s) * (w // s) for s in (8, 16, 32)), 8)
        assert relative_diff(raw, ref) < 1e-4
        ours = non_max_suppression(torch.from_numpy(raw), conf_thres=0.5, iou_thres=0.45, max_det=1000)
        assert sum(len(d) for d in ours) > 5  # the test means something
        assert det.shape == (sum(len(d) for d in ours), 7)
        for i, d in enumerate(ours):
            mine = det[det[:, 0] == i][:, 1:]  # x1, y1, x2, y2, score, class
            assert _sorted(mine).shape == d.shape
            np.testing.assert_allclose(_sorted(mine), _sorted(d.numpy()), atol=1e-4)


def _sorted(d: np.ndarray) -> np.ndarray:
    return d[np.lexsort((d[:, 0], d[:, 1], -d[:, 4], d[:, 5]))]


@pytest.mark.slow
def test_pruned_like_model_gives_smaller_file(tmp_path):
    spec = model_spec("yolov5n", nc=3)
    full = build_model(spec)
    small_spec = spec.copy()
    small_spec.channels = {k: max(4, v // 2) for k, v in spec.channels.items()}
    small = build_model(small_spec)
    info = ModelInfo(spec, NAMES, 64)
    a = export_onnx(full, info, tmp_path / "full.onnx", 64, check=False)
    b = export_onnx(small, ModelInfo(small_spec, NAMES, 64), tmp_path / "small.onnx", 64, check=False)
    param_ratio = count_params(small) / count_params(full)
    size_ratio = b.stat().st_size / a.stat().st_size
    assert param_ratio < 0.4
    assert abs(size_ratio - param_ratio) < 0.05


@pytest.mark.slow
def test_half_export_holds_float16_weights_and_keeps_float32_io(weights, tmp_path):
    out, full = tmp_path / "half.onnx", tmp_path / "full.onnx"
    js = tmp_path / "half.json"
    assert main(["export", "--weights", str(weights), "--half", "--nms", "--conf", "0.5", "--out", str(out),
                 "--json", str(js)]) == 0
    assert main(["export", "--weights", str(weights), "--out", str(full)]) == 0
    summary = json.loads(js.read_text())
    assert summary["precision"] == "float16" and 0 < summary["max_diff"] <= onnx_export.HALF_TOLERANCE
    proto = onnx.load(str(out))
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    dtypes = {i.data_type for i in proto.graph.initializer if i.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16} and len(conv_weights) > 20
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.FLOAT]
    assert read_metadata(out)["precision"] == "float16" and read_metadata(full)["precision"] == "float32"
    assert out.stat().st_size < 0.6 * full.stat().st_size
    model, _ = load_model(weights)
    x = check_input(model.spec, 1, 64, 64, seed=3)
    det, raw = OnnxModel(out).run(x.numpy())
    assert raw.dtype == np.float32 and relative_diff(raw, torch_decoded(model, x)) <= onnx_export.HALF_TOLERANCE
    assert len(det) > 0 and det.dtype == np.float32  # NMS runs on the float32 output


def test_half_and_device_refusals_are_one_line(weights, tmp_path, capsys):
    assert main(["export", "--weights", str(weights), "--format", "darknet", "--half"]) == 2
    assert "--half is for ONNX files" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["export", "--weights", str(weights), "--device", "cuda", "--out", str(tmp_path / "a.onnx")]) == 2
        err = capsys.readouterr().err.strip()
        assert "CUDA is not available" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_check_writes_no_file(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)
    model, info = load_model(weights)
    out = tmp_path / "bad.onnx"
    with pytest.raises(UserError, match=r"differs from PyTorch by [0-9.e-]+"):
        export_onnx(model, info, out, 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["--imgsz", "70"], "multiple of 32"),
    (["--format", "tflite"], "unknown --format 'tflite'"),
    (["--opset", "11"], "--opset must be"),
    (["--out", "x.txt"], "must end in .onnx"),
])
def test_bad_export_input_is_one_line_exit_2(weights, args, message, capsys):
    assert main(["export", "--weights", str(weights), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_weights_is_one_line_exit_2(tmp_path, capsys):
    assert main(["export", "--weights", str(tmp_path / "nope.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
