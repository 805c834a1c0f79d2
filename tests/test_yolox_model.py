"""YOLOX builder: official parameter counts, shapes, gradients, key layout, spec-driven widths."""

import pytest
import torch
import torch.fx

from yoloslim.errors import UserError
from yoloslim.models import build_model, create_model, model_spec
from yoloslim.models.decode import Decoder, preprocess
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.models.spec import ArchSpec

# counted on models built from the official Megvii code with 80 classes
OFFICIAL_PARAMS = {"yolox-nano": 912_159, "yolox-tiny": 5_055_855, "yolox-s": 8_968_255,
                   "yolox-m": 25_326_495, "yolox-l": 54_208_895, "yolox-x": 99_071_455}


@pytest.mark.parametrize("name", ["yolox-nano", "yolox-tiny", "yolox-s"])
def test_parameter_counts_match_official(name):
    assert count_params(create_model(name, nc=80)) == OFFICIAL_PARAMS[name]


@pytest.mark.slow
def test_parameter_counts_match_official_large():
    counts = {name: count_params(create_model(name, nc=80)) for name in ("yolox-m", "yolox-l", "yolox-x")}
    assert counts == {k: OFFICIAL_PARAMS[k] for k in counts}


@pytest.mark.parametrize("name,imgsz,readme", [("yolox-nano", 416, 1.08), ("yolox-tiny", 416, 6.45),
                                               ("yolox-s", 640, 26.8)])
def test_gflops_and_the_official_readme_figures(name, imgsz, readme):
    ours = total_gflops(profile(create_model(name), imgsz))  # conv 2·MACs + BN 4 per element, as thop x 2
    assert round(ours, 2 if readme < 10 else 1) == readme


def test_head_starts_at_prior_probability_and_decodes_anchor_free():
    model = create_model("yolox-nano", nc=3).eval()
    for conv in [*model.head.cls_preds, *model.head.obj_preds]:
        assert torch.allclose(conv.bias, torch.full_like(conv.bias, -4.59512), atol=1e-5)
    assert model.head_convs == [*model.head.reg_preds, *model.head.obj_preds, *model.head.cls_preds]
    assert [c.out_channels for c in model.head_convs] == [4, 4, 4, 1, 1, 1, 3, 3, 3]
    raw = model(torch.rand(1, 3, 64, 64) * 255)
    rows = Decoder(model.spec)(raw)  # (1, 64 + 16 + 4, 8)
    assert rows.shape == (1, 84, 8)
    # row 9 is level 0, grid cell (y=1, x=1): cx = (t_x + 1) * 8
    assert torch.allclose(rows[0, 9, 0], (raw[0][0, 0, 1, 1] + 1) * 8)
    assert torch.allclose(rows[0, 9, 3], raw[0][0, 3, 1, 1].exp() * 8)
    assert torch.allclose(rows[0, 9, 4:], raw[0][0, 4:, 1, 1].sigmoid())


def test_input_convention_is_bgr_0_255():
    spec = model_spec("yolox-s", nc=2)
    assert spec.input_bgr and spec.input_scale == 1.0 and spec.anchors == [] and spec.strides == [8, 16, 32]
    imgs = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    assert preprocess(imgs, spec).flatten().tolist() == [30.0, 20.0, 10.0]


def test_state_dict_keys_follow_official_layout():
    keys = set(create_model("yolox-s").state_dict())
    for k in ["backbone.backbone.stem.conv.conv.weight", "backbone.backbone.dark2.0.conv.weight",
              "backbone.backbone.dark3.1.m.2.conv2.bn.running_var",
              "backbone.backbone.dark5.1.conv2.conv.weight",
              "backbone.backbone.dark5.2.conv3.bn.weight", "backbone.lateral_conv0.conv.weight",
              "backbone.C3_n4.m.0.conv1.conv.weight", "backbone.bu_conv1.bn.num_batches_tracked",
              "head.stems.2.conv.weight", "head.cls_convs.0.1.conv.weight", "head.reg_preds.1.bias",
              "head.obj_preds.2.weight", "head.cls_preds.0.weight"]:
        assert k in keys
    nano = set(create_model("yolox-nano").state_dict())
    assert {"backbone.backbone.dark2.0.dconv.conv.weight", "backbone.bu_conv2.pconv.bn.bias",
            "backbone.backbone.dark3.1.m.0.conv2.dconv.conv.weight",
            "head.reg_convs.1.0.dconv.conv.weight"} <= nano


def test_bn_and_depthwise_settings():
    model = create_model("yolox-nano", nc=2)
    bn = model.backbone.backbone.stem.conv.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.03)
    dconv = model.backbone.backbone.dark2[0].dconv.conv
    assert dconv.groups == dconv.in_channels == dconv.out_channels == 16
    assert isinstance(model.backbone.backbone.dark5[1].m[2], torch.nn.MaxPool2d)
    assert [m.kernel_size for m in model.backbone.backbone.dark5[1].m] == [5, 9, 13]


def test_spec_lists_every_conv_and_every_csp_depth():
    spec = model_spec("yolox-s", nc=2)
    model = build_model(spec)
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    preds = {f"head.{k}_preds.{i}" for k in ("cls", "reg", "obj") for i in range(3)}
    assert set(spec.channels) == convs - preds
    assert spec.depths == {"backbone.backbone.dark2.1": 1, "backbone.backbone.dark3.1": 3,
                           "backbone.backbone.dark4.1": 3, "backbone.backbone.dark5.2": 1,
                           "backbone.C3_p4": 1, "backbone.C3_p3": 1, "backbone.C3_n3": 1, "backbone.C3_n4": 1}
    assert spec.options["decode"] == "anchor_free"


def test_smaller_spec_builds_smaller_model():
    spec = model_spec("yolox-nano", nc=2)
    spec.channels["backbone.backbone.dark2.1.m.0.conv1.conv"] = 5
    spec.channels["backbone.backbone.dark2.1.m.0.conv2.dconv.conv"] = 5  # depthwise keeps its input width
    spec.channels["head.stems.1.conv"] = 7
    spec.channels["head.cls_convs.1.0.dconv.conv"] = spec.channels["head.reg_convs.1.0.dconv.conv"] = 7
    spec.depths["backbone.backbone.dark3.1"] = 2
    for k in [k for k in spec.channels if k.startswith("backbone.backbone.dark3.1.m.2.")]:
        del spec.channels[k]
    model = build_model(ArchSpec.from_json(spec.to_json()))
    assert model.backbone.backbone.dark2[1].m[0].conv2.dconv.conv.in_channels == 5
    assert len(model.backbone.backbone.dark3[1].m) == 2
    assert model.head.cls_convs[1][0].dconv.conv.in_channels == 7
    assert model.head.reg_convs[1][0].dconv.conv.in_channels == 7
    out = model.eval()(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape) for o in out] == [(1, 7, 8, 8), (1, 7, 4, 4), (1, 7, 2, 2)]


def test_inconsistent_specs_are_refused():
    spec = model_spec("yolox-nano", nc=2)
    spec.channels["backbone.backbone.dark2.0.dconv.conv"] = 8
    with pytest.raises(UserError, match="depthwise"):
        build_model(spec)
    spec = model_spec("yolox-s", nc=2)
    spec.channels["backbone.backbone.dark2.1.m.0.conv2.conv"] = 8  # breaks the residual add
    with pytest.raises(UserError, match="residual"):
        build_model(spec)


def test_forward_is_fx_traceable():
    model = create_model("yolox-nano", nc=2).eval()
    gm = torch.fx.symbolic_trace(model)
    x = torch.rand(1, 3, 96, 64) * 255
    assert all(torch.equal(a, b) for a, b in zip(model(x), gm(x), strict=True))


def test_info_prints_the_official_parameter_count(capsys):
    from yoloslim.cli import main

    assert main(["info", "--model", "yolox-nano", "--imgsz", "416"]) == 0
    out = capsys.readouterr().out
    assert "yolox-nano (yolox, 80 classes)" in out and "912,159 parameters, 1.1 GFLOPs at 416x416" in out
