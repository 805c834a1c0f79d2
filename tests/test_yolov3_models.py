"""The YOLOv3 family: reference sizes, forward shapes, gradients, and the cfg <-> spec contract."""

import pytest
import torch

from yoloslim.errors import UserError
from yoloslim.models import build_model, model_spec
from yoloslim.models.profile import conv_gflops, count_params, profile
from yoloslim.models.spec import ArchSpec
from yoloslim.models.yolov3 import PRESETS

ALL = list(PRESETS)




def meta_model(name: str, nc: int = 80):
    """A preset with weights on the meta device: sizes and FLOPs without allocating 60M floats."""
    with torch.device("meta"):
        return build_model(model_spec(name, nc))


def narrow(spec: ArchSpec, div: int = 8) -> ArchSpec:
    """The same architecture with every width divided by ``div`` (a cheap stand-in for big presets)."""
    small = spec.copy()
    small.channels = {k: max(1, v // div) for k, v in spec.channels.items()}
    return small


@pytest.mark.parametrize("name,params", [("yolov3", 61_949_149), ("yolov3-spp", 62_998_749),
                                         ("yolov3-tiny", 8_852_366)])
def test_reference_parameter_counts(name, params):
    assert count_params(meta_model(name)) == params


def test_yolov3_conv_gflops_at_416():
    assert round(conv_gflops(profile(meta_model("yolov3"), 416)), 2) == 65.86


def test_light_variants_are_lighter_than_tiny():
    tiny = count_params(meta_model("yolov3-tiny"))
    for name in ("yolov3-lite", "yolov3-tiny-mobilenet"):
        assert count_params(meta_model(name)) < tiny / 5
    assert count_params(meta_model("yolov3-lite")) < count_params(meta_model("yolov3-tiny-mobilenet"))
    assert count_params(meta_model("yolov3-mobilenetv2")) < count_params(meta_model("yolov3-mobilenet"))


def test_yolov3_layout_follows_darknet_numbering():
    spec = model_spec("yolov3", nc=80)
    assert spec.depths == {"module_list.2": 1, "module_list.6": 2, "module_list.13": 8, "module_list.38": 8,
                           "module_list.63": 4}
    assert spec.channels["module_list.0.conv"] == 32
    assert spec.channels["module_list.13.m.7.cv2.conv"] == 256
    assert spec.channels["module_list.75.conv"] == 512
    assert "module_list.81.conv" not in spec.channels  # head widths follow nc
    assert spec.strides == [8, 16, 32]
    assert spec.anchors[0] == [10, 13, 16, 30, 33, 23]
    assert spec.options["decode"] == "darknet"
    assert spec.num_anchors == 3
    routes = [s for s in spec.options["cfg"] if s["type"] == "route"]
    assert [r["layers"] for r in routes] == [-4, [-1, 61], -4, [-1, 36]]


def test_spec_round_trips_through_json():
    spec = model_spec("yolov3-tiny-mobilenet", nc=3)
    again = ArchSpec.from_json(spec.to_json())
    a, b = build_model(spec).eval(), build_model(again).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 64, 64)
    assert all(torch.equal(p, q) for p, q in zip(a(x), b(x), strict=True))


def test_depthwise_convs_follow_their_input():
    spec = model_spec("yolov3-lite", nc=2)
    dw = [s for s in spec.options["cfg"] if s.get("depthwise")]
    assert dw and all("groups" not in s and "filters" not in s for s in dw)
    spec.channels["module_list.0.conv"] = 5  # the stem
    spec.channels["module_list.1.conv"] = 5  # the depthwise conv reading it
    model = build_model(spec)
    assert model.module_list["1"].conv.groups == 5
    spec.channels["module_list.1.conv"] = 4
    with pytest.raises(UserError, match="depthwise conv module_list.1.conv"):
        build_model(spec)


def test_stage_depth_and_unknown_names_are_checked():
    spec = narrow(model_spec("yolov3", nc=2))
    spec.depths["module_list.13"] = 9
    with pytest.raises(UserError, match="module_list.13 has 8 units"):
        build_model(spec)
    spec.depths["module_list.13"] = 3  # layer-pruned: the stage keeps units m.0-m.2
    spec.channels = {k: v for k, v in spec.channels.items() if not k.startswith(tuple(
        f"module_list.13.m.{j}." for j in range(3, 8)))}
    model = build_model(spec)
    assert len(model.module_list["13"].m) == 3
    spec.channels["module_list.13.m.5.cv1.conv"] = 16
    with pytest.raises(UserError, match="module_list.13.m.5"):
        build_model(spec)


def test_info_prints_the_reference_counts(capsys):
    from yoloslim.cli import main

    refs = (("yolov3", "61,949,149"), ("yolov3-spp", "62,998,749"), ("yolov3-tiny", "8,852,366"))
    for name, params in refs:
        assert main(["info", "--model", name, "--imgsz", "32"]) == 0
        assert f"{params} parameters" in capsys.readouterr().out
