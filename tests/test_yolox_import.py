"""Official YOLOX checkpoints import with identical outputs.

The reference below is written from the official architecture description (Megvii's
``network_blocks.py``, ``darknet.py``, ``yolo_pafpn.py``, ``yolo_head.py``): the official constructor
arithmetic and module names, and the official evaluation output ``cat(reg, obj.sigmoid(),
cls.sigmoid())`` decoded as ``xy = (xy + grid)·stride``, ``wh = exp(wh)·stride``. It shares no code
with yoloslim's builder, so a state dict it writes is an independent official-layout checkpoint.
"""

import pickle

import pytest
import torch
from torch import nn

from yoloslim.deploy.import_yolox import COCO_NAMES, import_yolox, infer_preset
from yoloslim.errors import UserError
from yoloslim.models.decode import DecodedModel, preprocess
from yoloslim.models.io import load_model

# ---------------------------------------------------------------------------- test-only reference


class RBaseConv(nn.Module):
    def __init__(self, cin, cout, k, s, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RDWConv(nn.Module):
    def __init__(self, cin, cout, k, s=1):
        super().__init__()
        self.dconv = RBaseConv(cin, cin, k, s, groups=cin)
        self.pconv = RBaseConv(cin, cout, 1, 1)

    def forward(self, x):
        return self.pconv(self.dconv(x))


class RBottleneck(nn.Module):
    def __init__(self, cin, cout, shortcut, dw):
        super().__init__()
        hidden = int(cout * 1.0)
        self.conv1 = RBaseConv(cin, hidden, 1, 1)
        self.conv2 = (RDWConv if dw else RBaseConv)(hidden, cout, 3, 1)
        self.use_add = shortcut and cin == cout

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class RCSPLayer(nn.Module):
    def __init__(self, cin, cout, n, shortcut=True, dw=False):
        super().__init__()
        hidden = int(cout * 0.5)
        self.conv1 = RBaseConv(cin, hidden, 1, 1)
        self.conv2 = RBaseConv(cin, hidden, 1, 1)
        self.conv3 = RBaseConv(2 * hidden, cout, 1, 1)
        self.m = nn.Sequential(*[RBottleneck(hidden, hidden, shortcut, dw) for _ in range(n)])

    def forward(self, x):
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), 1))


class RSPP(nn.Module):
    def __init__(self, cin, cout, ks=(5, 9, 13)):
        super().__init__()
        hidden = cin // 2
        self.conv1 = RBaseConv(cin, hidden, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in ks])
        self.conv2 = RBaseConv(hidden * (len(ks) + 1), cout, 1, 1)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [m(x) for m in self.m], 1))


class RFocus(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = RBaseConv(cin * 4, cout, k, 1)

    def forward(self, x):
        tl, tr, bl, br = x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat((tl, bl, tr, br), 1))


class RDarknet(nn.Module):
    def __init__(self, dep, wid, dw):
        super().__init__()
        Conv = RDWConv if dw else RBaseConv
        bc, bd = int(wid * 64), max(round(dep * 3), 1)
        self.stem = RFocus(3, bc, 3)
        self.dark2 = nn.Sequential(Conv(bc, bc * 2, 3, 2), RCSPLayer(bc * 2, bc * 2, bd, dw=dw))
        self.dark3 = nn.Sequential(Conv(bc * 2, bc * 4, 3, 2), RCSPLayer(bc * 4, bc * 4, bd * 3, dw=dw))
        self.dark4 = nn.Sequential(Conv(bc * 4, bc * 8, 3, 2), RCSPLayer(bc * 8, bc * 8, bd * 3, dw=dw))
        self.dark5 = nn.Sequential(Conv(bc * 8, bc * 16, 3, 2), RSPP(bc * 16, bc * 16),
                                   RCSPLayer(bc * 16, bc * 16, bd, shortcut=False, dw=dw))

    def forward(self, x):
        x3 = self.dark3(self.dark2(self.stem(x)))
        x4 = self.dark4(x3)
        return x3, x4, self.dark5(x4)


class RPAFPN(nn.Module):
    def __init__(self, depth, width, dw, ch=(256, 512, 1024)):
        super().__init__()
        self.backbone = RDarknet(depth, width, dw)
        Conv = RDWConv if dw else RBaseConv
        c0, c1, c2 = (int(c * width) for c in ch)
        n = round(3 * depth)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = RBaseConv(c2, c1, 1, 1)
        self.C3_p4 = RCSPLayer(2 * c1, c1, n, False, dw)
        self.reduce_conv1 = RBaseConv(c1, c0, 1, 1)
        self.C3_p3 = RCSPLayer(2 * c0, c0, n, False, dw)
        self.bu_conv2 = Conv(c0, c0, 3, 2)
        self.C3_n3 = RCSPLayer(2 * c0, c1, n, False, dw)
        self.bu_conv1 = Conv(c1, c1, 3, 2)
        self.C3_n4 = RCSPLayer(2 * c1, c2, n, False, dw)

    def forward(self, x):
        x2, x1, x0 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), x2], 1))
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        return pan_out2, pan_out1, pan_out0


class RHead(nn.Module):
    def __init__(self, nc, width, dw, ch=(256, 512, 1024), strides=(8, 16, 32)):
        super().__init__()
        Conv = RDWConv if dw else RBaseConv
        h = int(256 * width)
        self.strides = strides
        self.stems = nn.ModuleList([RBaseConv(int(c * width), h, 1, 1) for c in ch])
        self.cls_convs = nn.ModuleList([nn.Sequential(Conv(h, h, 3, 1), Conv(h, h, 3, 1)) for _ in ch])
        self.reg_convs = nn.ModuleList([nn.Sequential(Conv(h, h, 3, 1), Conv(h, h, 3, 1)) for _ in ch])
        self.cls_preds = nn.ModuleList([nn.Conv2d(h, nc, 1) for _ in ch])
        self.reg_preds = nn.ModuleList([nn.Conv2d(h, 4, 1) for _ in ch])
        self.obj_preds = nn.ModuleList([nn.Conv2d(h, 1, 1) for _ in ch])

    def forward(self, xin):  # the official eval path, decode_in_inference=True
        outputs = []
        for k, x in enumerate(xin):
            x = self.stems[k](x)
            cls_out = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            outputs.append(torch.cat([self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat).sigmoid(),
                                      cls_out.sigmoid()], 1))
        hw = [o.shape[-2:] for o in outputs]
        out = torch.cat([o.flatten(start_dim=2) for o in outputs], 2).permute(0, 2, 1)
        grids, strides = [], []
        for (hs, ws), s in zip(hw, self.strides, strict=True):
            yv, xv = torch.meshgrid(torch.arange(hs), torch.arange(ws), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, -1, 2)
            grids.append(grid)
            strides.append(torch.full((1, grid.shape[1], 1), s))
        grids, strides = torch.cat(grids, 1).float(), torch.cat(strides, 1).float()
        return torch.cat([(out[..., :2] + grids) * strides, out[..., 2:4].exp() * strides, out[..., 4:]], -1)


class RYOLOX(nn.Module):
    def __init__(self, nc, depth, width, dw):
        super().__init__()
        self.backbone = RPAFPN(depth, width, dw)
        self.head = RHead(nc, width, dw)
        for m in self.modules():  # the official exp's init_yolo
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    def forward(self, x):
        return self.head(self.backbone(x))


def reference_checkpoint(path, nc, depth, width, dw, wrap=True):
    """An official-layout checkpoint with random weights and BN statistics; returns the reference."""
    torch.manual_seed(1)
    ref = RYOLOX(nc, depth, width, dw).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.weight.mul_(0.1)  # keep exp(wh) finite on 0-255 inputs
                m.bias.uniform_(-0.5, 0.5)
    state = ref.state_dict()
    torch.save({"start_epoch": 300, "model": state, "optimizer": {"state": {}, "param_groups": []}} if wrap
               else state, path)
    return ref


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,depth,width,dw", [
    ("yolox-nano", 0.33, 0.25, True),
    pytest.param("yolox-s", 0.33, 0.50, False, marks=pytest.mark.slow),
])
def test_official_checkpoint_imports_with_identical_outputs(tmp_path, name, depth, width, dw):
    ref = reference_checkpoint(tmp_path / "official.pth", 3, depth, width, dw)
    out = import_yolox(tmp_path / "official.pth", name, tmp_path / "m.safetensors", names=["a", "b", "c"])
    model, info = load_model(out)
    assert (info.spec.name, info.spec.nc, info.names) == (name, 3, ["a", "b", "c"])
    assert info.history[-1]["action"] == "imported" and info.history[-1]["source"] == "yolox"
    assert set(model.state_dict()) == set(ref.state_dict())

    imgs = torch.randint(0, 256, (2, 3, 96, 64), dtype=torch.uint8)  # RGB, as yoloslim's loaders yield
    with torch.no_grad():
        expected = ref(imgs.flip(1).float())  # official input: BGR pixels in 0..255
        got = DecodedModel(model.eval())(preprocess(imgs, info.spec))
    assert got.shape == (2, 12 * 8 + 6 * 4 + 3 * 2, 8) and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_bare_or_ddp_state_dict_and_preset_inference(tmp_path):
    ref = reference_checkpoint(tmp_path / "bare.pth", 80, 0.33, 0.25, True, wrap=False)
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "ddp.pth")
    for src in ("bare.pth", "ddp.pth"):
        out = import_yolox(tmp_path / src, None, tmp_path / f"{src}.safetensors")
        model, info = load_model(out)
        assert (info.spec.name, info.names, info.imgsz) == ("yolox-nano", COCO_NAMES, 416)
    assert infer_preset(RYOLOX(2, 0.67, 0.75, False).state_dict()) == "yolox-m"
    assert infer_preset(RYOLOX(2, 0.33, 0.375, False).state_dict()) == "yolox-tiny"


def test_wrong_model_or_foreign_file_is_refused_with_a_hint(tmp_path):
    reference_checkpoint(tmp_path / "nano.pth", 2, 0.33, 0.25, True)
    with pytest.raises(UserError, match="is a yolox-nano.*--model yolox-nano"):
        import_yolox(tmp_path / "nano.pth", "yolox-s", tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="class names"):
        import_yolox(tmp_path / "nano.pth", "yolox-nano", tmp_path / "x.safetensors", names=["a"])
    torch.save({"model": {"model.0.conv.weight": torch.zeros(1)}}, tmp_path / "v5.pth")
    with pytest.raises(UserError, match="not a YOLOX state dict"):
        import_yolox(tmp_path / "v5.pth", None, tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="no such file"):
        import_yolox(tmp_path / "missing.pth", None, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": _Evil()}, f, protocol=2)
    torch.save({"model": _Evil()}, tmp_path / "evil2.pth")
    for name in ("evil.pth", "evil2.pth"):
        with pytest.raises(UserError, match="weights-only"):
            import_yolox(tmp_path / name, None, tmp_path / "x.safetensors")
    assert "pwned" not in capsys.readouterr().out


def test_cli_import_from_yolox_then_info(tmp_path, capsys):
    from yoloslim.cli import main

    reference_checkpoint(tmp_path / "official.pth", 80, 0.33, 0.25, True)
    out = tmp_path / "nano.safetensors"
    src = str(tmp_path / "official.pth")
    assert main(["import", "--from", "yolox", src, "--model", "yolox_nano", "--out", str(out)]) == 0
    assert main(["info", "--weights", str(out)]) == 0
    assert "912,159 parameters" in capsys.readouterr().out
    wrong = tmp_path / "s.safetensors"
    assert main(["import", "--from", "yolox", src, "--model", "yolox-s", "--out", str(wrong)]) == 2
    assert "--model yolox-nano" in capsys.readouterr().err
