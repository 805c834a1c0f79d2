"""Darknet .cfg + .weights: exact import of files in darknet's layout, export round trips, refusals."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import max_diff, randomize_bn
from yoloslim.deploy.darknet_io import darknet_layers, import_darknet, load_darknet, write_darknet
from yoloslim.errors import UserError
from yoloslim.models import build_model, create_model, model_spec
from yoloslim.models.darknet_cfg import format_cfg, parse_cfg
from yoloslim.models.io import load_model
from yoloslim.models.yolov3 import spec_from_cfg

# Every construct the importer must get exactly right: a size-2 stride-1 max-pool, a residual unit
# (shortcut from=-3), a depthwise conv, a relative and an absolute route, upsampling, two [yolo].
TINY_CFG = """
[net]
width=64
height=64
channels=3
# a comment; then a section with odd spacing
[convolutional]
batch_normalize = 1
filters=8
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=4
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
groups=8
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 3,4,5
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=2
num=6
jitter=.3
ignore_thresh = .7

[route]
layers = -3

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 6

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=2
num=6
"""

# darknet index -> (module name in yoloslim, batch norm?, in, out, k, groups), in cfg order
TINY_CONVS = [
    (0, "module_list.0", True, 3, 8, 3, 1),
    (2, "module_list.2.m.0.cv1", True, 8, 4, 1, 1),
    (3, "module_list.2.m.0.cv2", True, 4, 8, 3, 1),
    (5, "module_list.5", True, 8, 8, 3, 8),
    (7, "module_list.7", True, 8, 16, 3, 1),
    (8, "module_list.8", False, 16, 21, 1, 1),
    (11, "module_list.11", True, 16, 8, 1, 1),
    (14, "module_list.14", False, 16, 21, 1, 1),
]




def darknet_file(path: Path, major: int = 0, minor: int = 2, seed: int = 0, extra: int = 0,
                 short: int = 0) -> dict[str, torch.Tensor]:
    """Write TINY_CFG's weights as darknet lays them out; return the state dict they mean."""
    rng = np.random.default_rng(seed)
    head = np.array([major, minor, 7], "<i4").tobytes()
    head += np.array([123456], "<i8" if major * 10 + minor >= 2 else "<i4").tobytes()
    body, state = [], {}
    for _, name, bn, c_in, c_out, k, g in TINY_CONVS:
        if bn:
            beta, gamma = rng.uniform(-0.3, 0.3, c_out), rng.uniform(0.05, 1.0, c_out)
            mean, var = rng.uniform(-0.2, 0.2, c_out), rng.uniform(0.5, 1.5, c_out)
            body += [beta, gamma, mean, var]
            state.update({f"{name}.bn.bias": beta, f"{name}.bn.weight": gamma,
                          f"{name}.bn.running_mean": mean, f"{name}.bn.running_var": var})
        else:
            bias = rng.uniform(-2, 2, c_out)
            body.append(bias)
            state[f"{name}.conv.bias"] = bias
        w = rng.normal(0, 0.3, (c_out, c_in // g, k, k))
        body.append(w.ravel())
        state[f"{name}.conv.weight"] = w
    floats = np.concatenate(body).astype("<f4")
    floats = floats[:len(floats) - short] if short else np.concatenate([floats, np.zeros(extra, "<f4")])
    path.write_bytes(head + floats.tobytes())
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}




def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and head biases, so that any mix-up shows in the outputs."""
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for c in model.head_convs:
        c.bias.data = torch.rand(c.bias.shape, generator=g) * 4 - 2
    return model.eval()


def test_cfg_text_round_trips():
    sections = parse_cfg(TINY_CFG)
    assert sections[1] == {"type": "convolutional", "batch_normalize": 1, "filters": 8, "size": 3,
                           "stride": 2, "pad": 1, "activation": "leaky"}
    assert sections[10]["mask"] == [3, 4, 5] and sections[10]["jitter"] == 0.3
    assert sections[11]["layers"] == -3 and sections[14]["layers"] == [-1, 6]
    assert parse_cfg(format_cfg(sections)) == sections


@pytest.mark.parametrize("minor", [1, 2])  # `seen` is an int32 before darknet 0.2, an int64 from it
def test_weights_in_darknet_layout_import_exactly(tmp_path, minor):
    (tmp_path / "t.cfg").write_text(TINY_CFG)
    state = darknet_file(tmp_path / "t.weights", minor=minor)
    model, info = load_darknet(tmp_path / "t.weights", cfg=tmp_path / "t.cfg")
    own = model.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k], v), k
    reference = build_model(spec_from_cfg(parse_cfg(TINY_CFG), "t")).eval()  # the same numbers, by name
    reference.load_state_dict({**reference.state_dict(), **state})
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) == 0.0
    assert info.spec.nc == 2 and info.imgsz == 64 and info.names == ["class0", "class1"]
    assert info.spec.anchors == [[10, 14, 23, 27, 37, 58], [81, 82, 135, 169, 344, 319]]
    assert model.module_list["5"].conv.groups == 8  # the depthwise conv


def test_import_darknet_writes_a_model_file(tmp_path):
    (tmp_path / "t.cfg").write_text(TINY_CFG)
    darknet_file(tmp_path / "t.weights")
    model, _ = import_darknet(tmp_path / "t.cfg", tmp_path / "t.weights", tmp_path / "t.safetensors",
                              names=["hand", "cup"])
    loaded, info = load_model(tmp_path / "t.safetensors")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), loaded.eval()(x)) == 0.0
    assert info.names == ["hand", "cup"] and info.history[-1]["action"] == "imported"


@pytest.mark.parametrize("short,extra,match", [(5, 0, r"ends inside conv 7 of the cfg \(module_list.14"),
                                               (400, 0, r"ends inside conv 6 of the cfg \(module_list.11"),
                                               (0, 3, r"3 values remain after the last conv")])
def test_weights_of_the_wrong_length_are_refused(tmp_path, short, extra, match):
    (tmp_path / "t.cfg").write_text(TINY_CFG)
    darknet_file(tmp_path / "t.weights", short=short, extra=extra)
    with pytest.raises(UserError, match=match):
        load_darknet(tmp_path / "t.weights", cfg=tmp_path / "t.cfg")


@pytest.mark.parametrize("edit,match", [
    (("[upsample]", "[reorg]"), r"layer 12 \[reorg\] is not supported"),
    (("layers = -3", "layers = -3\ngroups=2\ngroup_id=1"), r"layer 10 \[route\]: groups=2 is not supported"),
    (("from=-3", "from=-3\nweights_type=per_channel"), r"layer 4 \[shortcut\]: weights_type"),
    (("activation=leaky", "activation=mish"), r"layer 0 \[convolutional\]: activation=mish"),
    (("layers = -1, 6", "layers = -1, 16"), r"layer 13 \[route\] refers to layer 16"),
    (("filters=21", "filters=20"), r"layer 8 feeding \[yolo\] layer 9 must be .* with filters=21"),
    (("layers = -1, 6", "layers = -1, 4"), r"layer 13 \[route\] joins maps of strides \[4.0, 2.0\]"),
])
def test_unsupported_or_inconsistent_cfgs_are_refused(tmp_path, edit, match):
    (tmp_path / "t.cfg").write_text(TINY_CFG.replace(*edit, 1))
    darknet_file(tmp_path / "t.weights")
    with pytest.raises(UserError, match=match):
        load_darknet(tmp_path / "t.weights", cfg=tmp_path / "t.cfg")


def test_export_writes_the_model_back(tmp_path):
    (tmp_path / "t.cfg").write_text(TINY_CFG)
    darknet_file(tmp_path / "t.weights", seed=3)
    model, _ = load_darknet(tmp_path / "t.weights", cfg=tmp_path / "t.cfg")
    write_darknet(model, tmp_path / "out.cfg", tmp_path / "out.weights", imgsz=64)
    assert parse_cfg((tmp_path / "out.cfg").read_text())[1:] == parse_cfg(TINY_CFG)[1:]
    body = (tmp_path / "out.weights").read_bytes()[20:]
    assert body == (tmp_path / "t.weights").read_bytes()[20:]  # byte for byte after the header


def test_every_preset_exports_and_reimports(tmp_path):
    for name in ("yolov3-tiny", "yolov3-mobilenetv2", "yolov3-lite", "yolov3-tiny-mobilenet"):
        spec = model_spec(name, nc=2)
        if name == "yolov3-mobilenetv2":
            spec.channels = {k: max(1, v // 4) for k, v in spec.channels.items()}
        model = randomize(build_model(spec))
        write_darknet(model, tmp_path / f"{name}.cfg", tmp_path / f"{name}.weights", imgsz=64)
        again, _ = load_darknet(tmp_path / f"{name}.weights", cfg=tmp_path / f"{name}.cfg")
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            assert max_diff(model(x), again(x)) == 0.0, name
        assert again.spec.depths == model.spec.depths


def test_yolov3_cfg_matches_pjreddie_layer_for_layer():
    sections, convs = darknet_layers(create_model_meta("yolov3"))
    assert len(sections) == 108 and len(convs) == 75  # [net] + 107 layers, 75 convs
    kinds = [s["type"] for s in sections[1:]]
    assert [i for i, k in enumerate(kinds) if k == "yolo"] == [82, 94, 106]
    assert [i for i, k in enumerate(kinds) if k == "shortcut"][:3] == [4, 8, 11]
    assert sections[87]["layers"] == [-1, 61] and sections[99]["layers"] == [-1, 36]
    assert sections[83]["mask"] == [6, 7, 8] and sections[83]["classes"] == 80  # sections[0] is [net]
    assert sections[82] == {"type": "convolutional", "filters": 255, "size": 1, "stride": 1, "pad": 1,
                            "activation": "linear"}


def create_model_meta(name: str):
    with torch.device("meta"):
        return create_model(name, nc=80)


def opencv_rows(cfg: Path, weights: Path, x: torch.Tensor) -> dict[int, np.ndarray]:
    """OpenCV's darknet reader run on ``x``: its [yolo] outputs by number of rows."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):  # dropped in OpenCV 5
        pytest.skip("this OpenCV has no darknet reader")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(x.numpy())
    names = net.getUnconnectedOutLayersNames()
    return {o.shape[0]: o for o in net.forward(names)}


def compare_with_opencv(model: nn.Module, tmp_path: Path, imgsz: int = 64) -> tuple[float, float, int]:
    """Max differences of (box + objectness, class scores) between the imported model and OpenCV.

    OpenCV's rows per [yolo] layer are ``cx, cy, w, h`` divided by the input size, the objectness, and
    per class ``objectness · p(class)`` where that exceeds the layer's ``thresh`` (0.2), else 0; rows
    run over cells, then anchors. Returns the two differences and the number of class scores compared.
    """
    from yoloslim.models.decode import Decoder

    write_darknet(model, tmp_path / "m.cfg", tmp_path / "m.weights", imgsz=imgsz)
    ours, _ = load_darknet(tmp_path / "m.weights", cfg=tmp_path / "m.cfg")
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    ref = opencv_rows(tmp_path / "m.cfg", tmp_path / "m.weights", x)
    with torch.no_grad():
        raw = ours(x)
        rows = Decoder(ours.spec)(raw)[0]  # (N, 5 + nc), levels by stride, anchor-major
    na, no = ours.spec.num_anchors, 5 + ours.spec.nc
    box_diff, cls_diff, compared, start = 0.0, 0.0, 0, 0
    for r in raw:
        h, w = r.shape[2:]
        level = rows[start:start + na * h * w].view(na, h, w, no).permute(1, 2, 0, 3).reshape(-1, no).numpy()
        start += na * h * w
        cv = ref[na * h * w]
        box_diff = max(box_diff, float(np.abs(level[:, :4] / imgsz - cv[:, :4]).max()),
                       float(np.abs(level[:, 4] - cv[:, 4]).max()))
        scores = level[:, 5:] * level[:, 4:5]
        shown = cv[:, 5:] > 0
        assert np.all(scores[~shown] < 0.2 + 1e-5)  # what OpenCV zeroes is below its threshold
        if shown.any():
            cls_diff = max(cls_diff, float(np.abs(scores[shown] - cv[:, 5:][shown]).max()))
        compared += int(shown.sum())
    return box_diff, cls_diff, compared


@pytest.mark.parametrize("act", ["leaky", "relu", "swish"])  # relu6 is not in OpenCV's reader
def test_opencv_reads_our_tiny_cfg_the_same(tmp_path, act):
    (tmp_path / "t.cfg").write_text(TINY_CFG.replace("activation=leaky", f"activation={act}"))
    darknet_file(tmp_path / "t.weights", seed=5)
    model, _ = load_darknet(tmp_path / "t.weights", cfg=tmp_path / "t.cfg")
    box, cls, compared = compare_with_opencv(model, tmp_path)
    assert box < 1e-4 and cls < 1e-4 and compared > 50


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov3-spp", "yolov3-lite", "yolov3-tiny-mobilenet",
                                  "yolov3-mobilenet"])
def test_opencv_agrees_on_presets(tmp_path, name):
    spec = model_spec(name, nc=3)
    spec.channels = {k: max(2, v // 8) for k, v in spec.channels.items()}
    box, cls, compared = compare_with_opencv(randomize(build_model(spec), seed=2), tmp_path)
    assert box < 1e-4 and cls < 1e-4 and compared > 0


def test_cli_import_from_darknet(tmp_path, capsys):
    from yoloslim.cli import main

    (tmp_path / "t.cfg").write_text(TINY_CFG)
    darknet_file(tmp_path / "t.weights")
    (tmp_path / "t.names").write_text("hand\ncup\n")
    out = tmp_path / "t.safetensors"
    assert main(["import", "--from", "darknet", str(tmp_path / "t.weights"), "--cfg", str(tmp_path / "t.cfg"),
                 "--names", str(tmp_path / "t.names"), "--out", str(out)]) == 0
    model, info = load_model(out)
    assert info.names == ["hand", "cup"] and info.spec.family == "yolov3" and info.imgsz == 64
    assert main(["import", "--from", "darknet", str(tmp_path / "t.weights"), "--out", str(out)]) == 2
    assert "--cfg" in capsys.readouterr().err


def test_cli_export_to_darknet(tmp_path):
    from yoloslim.cli import main

    (tmp_path / "t.cfg").write_text(TINY_CFG)
    darknet_file(tmp_path / "t.weights", seed=4)
    model, _ = import_darknet(tmp_path / "t.cfg", tmp_path / "t.weights", tmp_path / "t.safetensors")
    out = tmp_path / "out" / "back.cfg"
    assert main(["export", "--weights", str(tmp_path / "t.safetensors"), "--format", "darknet",
                 "--out", str(out)]) == 0
    assert (tmp_path / "out" / "back.weights").read_bytes()[20:] == (tmp_path / "t.weights").read_bytes()[20:]
    assert main(["export", "--weights", str(tmp_path / "t.safetensors"), "--format", "darknet",
                 "--out", str(tmp_path / "x.onnx")]) == 2
