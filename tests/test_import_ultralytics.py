"""Import of YOLOv8 / YOLO11 checkpoints of the ``ultralytics`` package, built here with their names.

The classes below carry the module and class names and the attribute layout of ultralytics 8.x
(``ultralytics.nn.modules.conv.Conv`` with ``conv/bn/act``, ``block.C2f`` with ``cv1/cv2/m``,
``block.C2PSA``, ``head.Detect`` with ``cv2/cv3/dfl`` and a plain ``stride`` tensor,
``tasks.DetectionModel`` with ``yaml``, ``names`` and ``model``). Their forward is the reference math
as ultralytics documents it (C2f concatenating every block's output, the PSA attention, the DFL
expectation and ``dist2bbox`` from anchor points at cell centres), written here independently of
yoloslim's blocks. They are registered under ``ultralytics.*`` in ``sys.modules`` only while
``torch.save`` pickles them, then removed, so yoloslim reads the file as a user's machine would.
"""

from __future__ import annotations

import copy
import os
import sys
import types

import pytest
import torch
from torch import nn

from helpers import fake_modules
from yoloslim.cli import main
from yoloslim.deploy.import_ultralytics import import_ultralytics
from yoloslim.deploy.import_yolov5 import import_yolov5
from yoloslim.errors import UserError
from yoloslim.models import blocks, blocks_v8, build_model, model_spec, yolov5, yolov8
from yoloslim.models.decode import DecodedModel
from yoloslim.models.io import load_model
from yoloslim.workflows.importer import import_checkpoint

CONV, BLOCK, HEAD, TASKS = ("ultralytics.nn.modules.conv", "ultralytics.nn.modules.block",
                            "ultralytics.nn.modules.head", "ultralytics.nn.tasks")


class Conv(nn.Module):
    __module__ = CONV

    def __init__(self, conv, bn, act):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DWConv(Conv):
    __module__ = CONV


class Concat(nn.Module):
    __module__ = CONV

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Bottleneck(nn.Module):
    __module__ = BLOCK

    def __init__(self, cv1, cv2, add):
        super().__init__()
        self.cv1, self.cv2, self.add = cv1, cv2, add

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    __module__ = BLOCK

    def __init__(self, cv1, cv2, m):
        super().__init__()
        self.c = cv1.conv.out_channels // 2
        self.cv1, self.cv2, self.m = cv1, cv2, m

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3k2(C2f):
    __module__ = BLOCK


class C3(nn.Module):
    __module__ = BLOCK

    def __init__(self, cv1, cv2, cv3, m):
        super().__init__()
        self.cv1, self.cv2, self.cv3, self.m = cv1, cv2, cv3, m

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k(C3):
    __module__ = BLOCK


class SPPF(nn.Module):
    __module__ = BLOCK

    def __init__(self, cv1, cv2, k=5):
        super().__init__()
        self.cv1, self.cv2 = cv1, cv2
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    __module__ = BLOCK

    def __init__(self, qkv, proj, pe, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = pe.conv.out_channels // num_heads
        self.key_dim = self.head_dim // 2
        self.scale = self.key_dim ** -0.5
        self.qkv, self.proj, self.pe = qkv, proj, pe

    def forward(self, x):
        b, c, h, w = x.shape
        n = h * w
        q, k, v = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, n).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(b, -1, h, w) + self.pe(v.reshape(b, -1, h, w))
        return self.proj(x)


class PSABlock(nn.Module):
    __module__ = BLOCK

    def __init__(self, attn, ffn):
        super().__init__()
        self.attn, self.ffn, self.add = attn, ffn, True

    def forward(self, x):
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    __module__ = BLOCK

    def __init__(self, cv1, cv2, m):
        super().__init__()
        self.c = cv1.conv.out_channels // 2
        self.cv1, self.cv2, self.m = cv1, cv2, m

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class DFL(nn.Module):
    __module__ = BLOCK

    def __init__(self, conv):
        super().__init__()
        self.conv, self.c1 = conv, conv.in_channels

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    __module__ = HEAD

    def __init__(self, nc, cv2, cv3, dfl):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(cv2), dfl.c1
        self.no = nc + 4 * self.reg_max
        self.stride = torch.tensor([8.0, 16.0, 32.0])  # a plain attribute, as theirs
        self.cv2, self.cv3, self.dfl = cv2, cv3, dfl
        self.end2end = False

    def forward(self, xs):  # eval: (b, 4 + nc, N) xywh in pixels and class probabilities
        x = [torch.cat((self.cv2[i](xs[i]), self.cv3[i](xs[i])), 1) for i in range(self.nl)]
        points, strides = [], []
        for xi, s in zip(x, self.stride, strict=True):
            _, _, h, w = xi.shape
            sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(s)))
        anchors, strides = torch.cat(points).T, torch.cat(strides).T  # (2, N), (1, N)
        box, cls = torch.cat([xi.flatten(2) for xi in x], 2).split((4 * self.reg_max, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors - lt, anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class DetectionModel(nn.Module):
    __module__ = TASKS

    def __init__(self, cfg, layers, names):
        super().__init__()
        self.yaml = cfg
        self.model = nn.Sequential(*layers)
        self.save = sorted({j for m in layers for j in ([m.f] if isinstance(m.f, int) else m.f) if j != -1})
        self.names, self.nc, self.inplace, self.end2end = names, cfg["nc"], True, False
        self.stride = layers[-1].stride
        self.args = {"box": 7.5, "cls": 0.5, "dfl": 1.5}

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


class SegmentationModel(DetectionModel):
    __module__ = TASKS


ALL = {CONV: (Conv, DWConv, Concat),
       BLOCK: (Bottleneck, C2f, C3k2, C3, C3k, SPPF, Attention, PSABlock, C2PSA, DFL),
       HEAD: (Detect,), TASKS: (DetectionModel, SegmentationModel)}


def _mirror(m, version, path=""):
    """The ultralytics twin of one of our modules: same shapes, same state-dict keys."""
    if isinstance(m, blocks.Conv):
        cls = DWConv if ".cv3." in path and m.conv.groups > 1 else Conv
        return cls(copy.deepcopy(m.conv), copy.deepcopy(m.bn), copy.deepcopy(m.act))
    if isinstance(m, (blocks_v8.Bottleneck3, blocks.Bottleneck)):
        return Bottleneck(_mirror(m.cv1, version), _mirror(m.cv2, version), m.add)
    if isinstance(m, yolov5.C3):  # YOLOv5u
        return C3(*(_mirror(x, version) for x in (m.cv1, m.cv2, m.cv3)),
                  nn.Sequential(*(_mirror(b, version) for b in m.m)))
    if isinstance(m, blocks_v8.C3k):
        return C3k(*(_mirror(x, version) for x in (m.cv1, m.cv2, m.cv3)),
                   nn.Sequential(*(_mirror(b, version) for b in m.m)))
    if isinstance(m, blocks_v8.C2f):
        return (C2f if version == "v8" else C3k2)(_mirror(m.cv1, version), _mirror(m.cv2, version),
                                                  nn.ModuleList(_mirror(b, version) for b in m.m))
    if isinstance(m, yolov5.SPPF):
        return SPPF(_mirror(m.cv1, version), _mirror(m.cv2, version))
    if isinstance(m, blocks_v8.C2PSA):
        psa = [PSABlock(Attention(_mirror(b.attn.qkv, version), _mirror(b.attn.proj, version),
                                  _mirror(b.attn.pe, version), b.attn.heads),
                        nn.Sequential(*(_mirror(f, version) for f in b.ffn))) for b in m.m]
        return C2PSA(_mirror(m.cv1, version), _mirror(m.cv2, version), nn.Sequential(*psa))
    if isinstance(m, blocks_v8.DetectDFL):
        seq = lambda branch, name: nn.ModuleList(  # noqa: E731
            nn.Sequential(*(_mirror_any(x, version, f".{name}.") for x in s)) for s in branch)
        return Detect(m.nc, seq(m.cv2, "cv2"), seq(m.cv3, "cv3"), DFL(copy.deepcopy(m.dfl.conv)))
    if isinstance(m, nn.Upsample):
        return nn.Upsample(None, 2, "nearest")
    assert isinstance(m, blocks.Concat), type(m)
    return Concat(1)


def _mirror_any(m, version, path):
    if isinstance(m, nn.Sequential):  # YOLO11's depthwise class branch: Sequential(DWConv, Conv)
        return nn.Sequential(*(_mirror_any(x, version, path) for x in m))
    return copy.deepcopy(m) if isinstance(m, nn.Conv2d) else _mirror(m, version, path)


def _yaml(name, nc):
    version, gd, gw, cap = yolov8.PRESETS[name]
    table = yolov8.LAYERS[version]
    rows = [[f, n, "nn.Upsample" if kind == "Upsample" else kind,
             {"Upsample": [None, 2, "nearest"], "Concat": [1], "Detect": ["nc"]}.get(kind, list(args))]
            for f, n, kind, args in table]
    split = 11 if version == "11" else 10
    return {"nc": nc, "scales": {name[-1]: [gd, gw, cap]}, "scale": name[-1], "yaml_file": f"{name}.yaml",
            "channels": 3, "backbone": rows[:split], "head": rows[split:]}


def _ultralytics_model(name="yolov8n", nc=3):
    """``name`` in the ultralytics layout, with random BN statistics and class priors near 0.5."""
    torch.manual_seed(0)
    ours = build_model(model_spec(name, nc))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        for seq in ours.detect.cv3:
            seq[-1].bias.normal_(0, 1, generator=g)
    version = yolov8.PRESETS[name][0]
    layers = [_mirror(m, version) for m in ours.model]
    for i, (layer, (f, _, kind, _)) in enumerate(zip(layers, yolov8.LAYERS[version], strict=True)):
        layer.f, layer.i, layer.type, layer.np = f, i, kind, 0
    theirs = DetectionModel(_yaml(name, nc), layers, {i: f"c{i}" for i in range(nc)})
    theirs.load_state_dict(ours.state_dict())
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03  # what ultralytics' initialize_weights sets
    theirs.model[1].bn.eps = 1e-5  # one unusual eps: folded into running_var on import
    return theirs.eval()


def registered():
    """Register the classes above under their ultralytics module names; calling what it yields removes them."""
    return fake_modules({"ultralytics": (), "ultralytics.nn": (), "ultralytics.nn.modules": (), **ALL})


@pytest.fixture
def ultralytics_modules():
    with registered() as remove:
        yield remove


def write_checkpoint(path, name="yolov8n", names=("c0", "c1", "c2"), training=False):
    """A ``best.pt`` as ultralytics writes it for ``name`` with classes ``names`` (the docs test's input)."""
    with registered():
        theirs = _ultralytics_model(name, len(names))
        theirs.names = dict(enumerate(names))
        _save_like_ultralytics(theirs, path, training)


def _save_like_ultralytics(model, path, training=False):
    """``torch.save`` as their trainer's ``save_model`` (``training``: ``model`` None, the EMA and the
    optimizer state) or as ``strip_optimizer`` leaves ``best.pt`` (``model`` the half EMA, ``ema`` None)."""
    half = copy.deepcopy(model).half()
    for p in half.parameters():
        p.requires_grad = False
    ckpt = {"epoch": -1, "best_fitness": None, "model": half, "ema": None, "updates": None, "optimizer": None,
            "scaler": None, "train_args": {"model": "yolov8n.yaml", "imgsz": 96, "data": "data.yaml", "epochs": 3},
            "train_metrics": {"metrics/mAP50(B)": 0.1}, "date": "2026-01-01T00:00:00", "version": "8.3.0",
            "license": "AGPL-3.0", "docs": "https://docs.ultralytics.com"}
    if training:
        ckpt.update(epoch=2, best_fitness=0.05, model=None, ema=half, updates=30,
                    optimizer={"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
                    stopper={"best_fitness": 0.05, "best_epoch": 2})
    torch.save(ckpt, path)


def _reference(model, x):
    """Their forward in float32 with the half-rounded weights the file holds."""
    with torch.no_grad():
        return copy.deepcopy(model).half().float()(x)


@pytest.mark.parametrize("name,training", [("yolov8n", False), ("yolo11n", True), ("yolov5nu", False)])
def test_import_gives_identical_outputs(tmp_path, ultralytics_modules, name, training):
    theirs = _ultralytics_model(name)
    ckpt = tmp_path / "best.pt"
    _save_like_ultralytics(theirs, ckpt, training)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    ref = _reference(theirs, x)  # (1, 4 + nc, N)
    ultralytics_modules()  # their code is gone: only the file remains
    assert "ultralytics.nn.tasks" not in sys.modules

    out = tmp_path / "model.safetensors"
    assert main(["import", "--from", "ultralytics", str(ckpt), "--out", str(out)]) == 0
    assert "ultralytics" not in sys.modules  # nothing was imported from the checkpoint's module names
    model, info = load_model(out)
    with torch.no_grad():
        rows = DecodedModel(model).eval()(x)  # (1, N, 5 + nc)
    got = torch.cat((rows[..., :4], rows[..., 5:]), -1).transpose(1, 2)
    assert float(rows[..., 4].min()) == 1.0  # no objectness in a DFL head
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    assert float(ref[:, 4:].std()) > 0.05  # the class scores vary: the comparison means something
    assert info.spec.name == name and info.spec.nc == 3 and info.names == ["c0", "c1", "c2"]
    assert info.imgsz == 96
    assert info.history[-1]["action"] == "imported" and info.history[-1]["source"] == "ultralytics"


class _Evil:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("how", ["os.system", "ultralytics function"])
def test_pickle_that_runs_code_is_refused(tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    call = os.system
    if how != "os.system":  # a lower-case global under ultralytics.* is a function, not a class: never called
        mod = types.ModuleType("ultralytics.utils.checks")
        call = lambda cmd: os.system(cmd)  # noqa: E731
        call.__module__, call.__qualname__ = mod.__name__, "check_requirements"
        mod.check_requirements = call
    saved = dict(sys.modules)
    if how != "os.system":
        sys.modules.update({n: types.ModuleType(n) for n in ("ultralytics", "ultralytics.utils")})
        sys.modules[mod.__name__] = mod
    try:
        torch.save({"model": _Evil((call, (f"touch {marker}",))), "version": "8.3.0"}, tmp_path / "evil.pt")
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    out = tmp_path / "m.safetensors"
    assert main(["import", "--from", "ultralytics", str(tmp_path / "evil.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and ("system" in err if how == "os.system" else "check_requirements" in err)
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists() and not out.exists()


def test_other_architectures_and_wrong_commands_are_refused(tmp_path, ultralytics_modules, capsys):
    theirs = _ultralytics_model("yolov8n")
    seg = SegmentationModel(theirs.yaml, list(theirs.model), theirs.names)
    e2e = copy.deepcopy(theirs)
    e2e.model[-1].end2end = True
    regmax = copy.deepcopy(theirs)
    regmax.yaml = {**theirs.yaml, "reg_max": 1}
    old = copy.deepcopy(theirs)  # early 8.0 releases: one yaml per scale, multiples instead of scales
    old.yaml = {k: v for k, v in theirs.yaml.items() if k not in ("scale", "scales")}
    old.yaml.update(depth_multiple=0.33, width_multiple=0.25)
    wide = copy.deepcopy(old)  # a width no scale of the table gives
    wide.yaml["backbone"][7] = [-1, 1, "Conv", [768, 3, 2]]
    files = {}
    for key, m in {"best": theirs, "seg": seg, "e2e": e2e, "regmax": regmax, "old": old, "wide": wide}.items():
        files[key] = tmp_path / f"{key}.pt"
        _save_like_ultralytics(m, files[key])
    ultralytics_modules()

    assert import_ultralytics(files["old"])[1].spec.name == "yolov8n"
    for key, message in [("seg", "a segmentation model"), ("e2e", "end-to-end"), ("regmax", "reg_max 1"),
                         ("wide", "not one of the n/s/m/l/x scales")]:
        with pytest.raises(UserError, match=message):
            import_ultralytics(files[key])
    with pytest.raises(UserError, match="--from ultralytics"):  # the YOLOv5-repo importer points to this one
        import_yolov5(files["best"])
    with pytest.raises(UserError, match=r"did you mean 'ultralytics'"):
        import_checkpoint("ultralytic", files["best"], tmp_path / "m.safetensors")
    assert main(["val", "--weights", str(files["best"]), "--data", str(tmp_path)]) == 2
    assert f"yoloslim import --from ultralytics {files['best']}" in capsys.readouterr().err


def test_yolov5u_presets_have_the_reference_sizes():
    """Parameter counts of ultralytics 8.4.190's YOLOv5u models (80 classes), read there with
    ``sum(p.numel() for p in YOLO("yolov5nu.yaml").model.parameters())``."""
    sizes = {"yolov5nu": 2_654_816, "yolov5su": 9_153_152}
    for name, n in sizes.items():
        with torch.device("meta"):
            model = build_model(model_spec(name))
        assert sum(p.numel() for p in model.parameters()) == n, name
