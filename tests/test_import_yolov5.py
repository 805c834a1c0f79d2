"""Import of ultralytics YOLOv5 checkpoints, built here with their module and class names.

The classes below mirror the attribute layout of the ultralytics repo (v6.x/v7.0): ``Conv`` with
``conv/bn/act``, ``C3`` with ``cv1/cv2/cv3/m``, ``Detect`` with an ``m`` ModuleList, an ``anchors``
buffer in grid units and a ``stride`` attribute, ``DetectionModel`` with ``yaml``, ``names`` and
``model``. Their forward is the reference math (the Detect decodes as ultralytics does in eval mode).
They are registered as modules ``models.common`` / ``models.yolo`` only while ``torch.save`` pickles
them, then removed, so yoloslim reads the file without them.
"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from helpers import fake_modules
from yoloslim.cli import main
from yoloslim.deploy.import_yolov5 import import_yolov5
from yoloslim.errors import UserError
from yoloslim.models import blocks, build_model, model_spec, yolov5
from yoloslim.models.decode import Decoder
from yoloslim.models.io import load_model
from yoloslim.workflows.importer import import_checkpoint

# auto-anchored: the Detect buffer holds these while the yaml keeps the defaults
ANCHORS = [[12, 15, 18, 33, 35, 25], [31, 60, 64, 44, 58, 121], [118, 92, 150, 200, 370, 320]]


class Conv(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, k=1, s=1, p=None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Focus(Conv):
    __module__ = "models.common"


class Bottleneck(nn.Module):
    __module__ = "models.common"

    def __init__(self, cv1, cv2, add):
        super().__init__()
        self.cv1, self.cv2, self.add = cv1, cv2, add

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    __module__ = "models.common"

    def __init__(self, cv1, cv2, cv3, m):
        super().__init__()
        self.cv1, self.cv2, self.cv3, self.m = cv1, cv2, cv3, m

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    __module__ = "models.common"

    def __init__(self, cv1, cv2, k=5):
        super().__init__()
        self.cv1, self.cv2 = cv1, cv2
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    __module__ = "models.common"

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Detect(nn.Module):
    __module__ = "models.yolo"

    def __init__(self, nc, anchors, ch):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors), len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.stride = torch.tensor([8.0, 16.0, 32.0, 64.0][: self.nl])
        pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", pixels / self.stride.view(-1, 1, 1))  # grid units
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.inplace = True

    def forward(self, xs):  # ultralytics v7 eval: (decoded (b, N, no), raw [(b, na, ny, nx, no)])
        z, raw = [], []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            b, _, ny, nx = x.shape
            x = x.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(x)
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2).float() - 0.5
            anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)
            xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(b, -1, self.no))
        return torch.cat(z, 1), raw


class DetectionModel(nn.Module):
    __module__ = "models.yolo"

    def __init__(self, cfg, layers, names):
        super().__init__()
        self.yaml = cfg
        self.model = nn.Sequential(*layers)
        self.save = sorted({j for m in layers for j in ([m.f] if isinstance(m.f, int) else m.f) if j != -1})
        self.names = names
        self.inplace = True
        self.stride = layers[-1].stride
        self.hyp = {"box": 0.05, "cls": 0.5}
        self.class_weights = torch.ones(len(names))

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def _cfg(nc, anchors=yolov5.DEFAULT_ANCHORS):
    special = {"Upsample": [None, 2, "nearest"], "Concat": [1], "Detect": ["nc", "anchors"]}
    rows = [[f, n, "nn.Upsample" if kind == "Upsample" else kind, special.get(kind, list(args))]
            for f, n, kind, args in yolov5.LAYERS]
    return {"nc": nc, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [list(a) for a in anchors],
            "backbone": rows[:10], "head": rows[10:]}


def _mirror(m, nc, anchors):
    """The ultralytics-layout twin of one of our modules (same shapes, same state-dict keys)."""
    if isinstance(m, blocks.Conv):
        c = m.conv
        return Conv(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0])
    if isinstance(m, blocks.Bottleneck):
        return Bottleneck(_mirror(m.cv1, nc, anchors), _mirror(m.cv2, nc, anchors), m.add)
    if isinstance(m, yolov5.C3):
        return C3(*(_mirror(x, nc, anchors) for x in (m.cv1, m.cv2, m.cv3)),
                  nn.Sequential(*(_mirror(b, nc, anchors) for b in m.m)))
    if isinstance(m, yolov5.SPPF):
        return SPPF(_mirror(m.cv1, nc, anchors), _mirror(m.cv2, nc, anchors))
    if isinstance(m, nn.Upsample):
        return nn.Upsample(None, 2, "nearest")
    if isinstance(m, blocks.Concat):
        return Concat(1)
    return Detect(nc, anchors, [c.in_channels for c in m.m])


def _ultralytics_model(nc=3, p6=False, focus=False):
    """A pruned-width yolov5n in the ultralytics layout, random weights and BN statistics."""
    spec = model_spec("yolov5n", nc)
    spec.anchors = [list(map(float, a)) for a in ANCHORS]
    for name, width in {"model.0.conv": 12, "model.4.m.0.cv1.conv": 7, "model.9.cv1.conv": 50,
                        "model.13.cv2.conv": 20}.items():
        spec.channels[name] = width
    ours = build_model(spec)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    layers = [_mirror(m, nc, ANCHORS) for m in ours.model]
    for i, (layer, (f, _, kind, _)) in enumerate(zip(layers, yolov5.LAYERS, strict=True)):
        layer.f, layer.i, layer.type, layer.np = f, i, f"models.common.{kind}", 0
    theirs = DetectionModel(_cfg(nc), layers, {i: f"c{i}" for i in range(nc)})  # v7.0 names: a dict
    theirs.load_state_dict(ours.state_dict())
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03  # what ultralytics' initialize_weights sets
    theirs.model[1].bn.eps = 1e-5  # one unusual eps: folded into running_var on import
    if p6:
        det = theirs.model[-1]
        four = [*ANCHORS, [436, 615, 739, 380, 925, 792]]
        theirs.model[-1] = Detect(nc, four, [c.in_channels for c in det.m] + [det.m[-1].in_channels])
        theirs.model[-1].f, theirs.model[-1].i = [17, 20, 23, 23], 24
        theirs.yaml["anchors"] = four
    if focus:
        c = theirs.model[0].conv
        theirs.model[0] = Focus(12, c.out_channels, 3)
        theirs.model[0].f, theirs.model[0].i = -1, 0
    return theirs.eval()


def registered():
    """Register the classes above as ``models``, ``models.common`` and ``models.yolo``; calling what it
    yields removes them."""
    return fake_modules({"models": (), "models.common": (Conv, Focus, Bottleneck, C3, SPPF, Concat),
                         "models.yolo": (Detect, DetectionModel), "utils": ()})


@pytest.fixture
def ultralytics_modules():
    """The classes above registered under their ultralytics module names, removed afterwards."""
    with registered() as remove:
        yield remove


def write_checkpoint(path, names=("c0", "c1", "c2")):
    """A ``best.pt`` of the yolov5 repo (a YOLOv5n of classes ``names``; the docs test's input)."""
    with registered():
        theirs = _ultralytics_model(len(names))
        theirs.names = dict(enumerate(names))
        _save_like_ultralytics(theirs, path)


def _save_like_ultralytics(model, path, stripped=True):
    """``torch.save`` the way ultralytics' train.py (``stripped=False``) or strip_optimizer does."""
    half = copy.deepcopy(model).half()
    for p in half.parameters():
        p.requires_grad = False
    ckpt = {"epoch": -1, "best_fitness": None, "model": half, "ema": None, "updates": None, "optimizer": None,
            "opt": {"imgsz": 96, "weights": "yolov5n.pt", "hyp": {"lr0": 0.01}}, "git": {"url": None},
            "date": "2024-01-01T00:00:00"}
    if not stripped:  # last.pt during training: numpy fitness, the EMA and the optimizer state
        ckpt.update(epoch=3, best_fitness=np.array([0.25]), ema=copy.deepcopy(half), updates=12,
                    optimizer={"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]})
    torch.save(ckpt, path)


def _reference(model, x):
    """Their forward in float32 with the half-rounded weights the file holds."""
    with torch.no_grad():
        return copy.deepcopy(model).half().float()(x)


def _assert_same(ours, ref, x):
    ref_z, ref_raw = ref
    with torch.no_grad():
        raw = ours(x)
        z = Decoder(ours.spec)(raw)
    for r, t in zip(raw, ref_raw, strict=True):
        b, _, h, w = r.shape
        torch.testing.assert_close(r.view(b, 3, -1, h, w).permute(0, 1, 3, 4, 2), t, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(z, ref_z, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("stripped", [True, False])
def test_import_ultralytics_checkpoint_gives_identical_outputs(tmp_path, ultralytics_modules, stripped):
    theirs = _ultralytics_model()
    ckpt = tmp_path / "best.pt"
    _save_like_ultralytics(theirs, ckpt, stripped)
    x = torch.rand(1, 3, 64, 96)
    ref = _reference(theirs, x)
    ultralytics_modules()  # their code is gone: only the file remains
    assert "models.yolo" not in sys.modules

    out = tmp_path / "model.safetensors"
    argv = ["import", "--from", "yolov5", str(ckpt), "--out", str(out), "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    assert "models" not in sys.modules  # nothing was imported from the checkpoint's module names
    model, info = load_model(out)
    model.eval()
    _assert_same(model, ref, x)
    assert info.names == ["c0", "c1", "c2"]
    assert info.imgsz == 96
    assert info.spec.name == "yolov5n" and info.spec.nc == 3
    assert info.spec.channels["model.9.cv1.conv"] == 50 and info.spec.channels["model.0.conv"] == 12
    assert info.spec.anchors == [[float(v) for v in a] for a in ANCHORS]  # the Detect buffer, not the yaml
    assert info.history[-1]["action"] == "imported"


def test_import_state_dict_with_cfg(tmp_path, ultralytics_modules):
    theirs = _ultralytics_model(nc=2)
    theirs.model[1].bn.eps = 1e-3  # a bare state dict cannot carry eps: ultralytics always uses 1e-3
    ckpt = tmp_path / "weights.pt"
    state = {k: v.half() if v.is_floating_point() else v for k, v in theirs.state_dict().items()}
    torch.save({"model": state}, ckpt)
    cfg = tmp_path / "yolov5n.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(2)))
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    x = torch.rand(1, 3, 64, 64)
    ref = _reference(theirs, x)
    ultralytics_modules()

    with pytest.raises(UserError, match="--cfg"):
        import_yolov5(ckpt)
    out = tmp_path / "m.safetensors"
    summary = import_checkpoint("yolov5", ckpt, out, cfg=cfg, names=names)
    assert summary["nc"] == 2 and summary["round_trip_max_diff"] == 0.0
    model, info = load_model(out)
    _assert_same(model.eval(), ref, x)
    assert info.names == ["cat", "dog"]


@pytest.mark.parametrize("kind,message", [("p6", "P6 model with 4 output levels"), ("focus", "Focus stem")])
def test_unsupported_architectures_are_refused(tmp_path, ultralytics_modules, kind, message):
    theirs = _ultralytics_model(p6=kind == "p6", focus=kind == "focus")
    ckpt = tmp_path / f"{kind}.pt"
    _save_like_ultralytics(theirs, ckpt)
    ultralytics_modules()
    with pytest.raises(UserError, match=message):
        import_yolov5(ckpt)


class _Evil:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_pickle_that_runs_code_is_refused(tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    call = ((os.system, (f"touch {marker}",)) if how == "os.system"
            else (eval, (f"__import__('os').system('touch {marker}')",)))
    ckpt = tmp_path / "evil.pt"
    torch.save({"epoch": -1, "model": _Evil(call)}, ckpt)
    assert main(["import", "--from", "yolov5", str(ckpt), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and ("system" in err if how == "os.system" else "builtins.eval" in err)
    assert not marker.exists()
    assert not (tmp_path / "m.safetensors").exists()


def test_unknown_source_format_suggests(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="did you mean 'yolov5'"):
        import_checkpoint("yolov6", tmp_path / "a.pt", tmp_path / "m.safetensors")
