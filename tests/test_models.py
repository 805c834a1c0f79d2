import pytest

from yoloslim.errors import UserError
from yoloslim.models import build_model, create_model, model_spec
from yoloslim.models.profile import count_params, probe, profile, total_gflops
from yoloslim.models.spec import ArchSpec, check_imgsz


@pytest.mark.parametrize("name,params", [("yolov5n", 1_872_157), ("yolov5s", 7_235_389), ("yolov5m", 21_190_557)])
def test_yolov5_parameter_counts_match_reference(name, params):
    assert count_params(create_model(name, nc=80)) == params


def test_yolov5s_gflops_at_640():
    assert round(total_gflops(profile(create_model("yolov5s"), 640)), 1) == 16.5


def test_state_dict_keys_follow_reference_layout():
    keys = set(create_model("yolov5s").state_dict())
    for k in ["model.0.conv.weight", "model.2.cv1.conv.weight", "model.2.m.0.cv2.bn.running_var",
              "model.9.cv2.conv.weight", "model.24.m.0.weight", "model.24.anchors"]:
        assert k in keys


def test_spec_with_smaller_widths_builds_smaller_model():
    spec = model_spec("yolov5n", nc=3)
    spec.channels["model.2.m.0.cv1.conv"] = 5
    model = build_model(ArchSpec.from_json(spec.to_json()))
    assert model.model[2].m[0].cv1.conv.out_channels == 5
    assert model.model[2].m[0].cv2.conv.in_channels == 5


@pytest.mark.parametrize("imgsz", [70, 0, -32, 16])
def test_imgsz_not_a_positive_multiple_of_the_largest_stride_is_refused(imgsz):
    spec = model_spec("yolov5n", nc=3)
    check_imgsz(64, spec)
    check_imgsz(128, 64, "--calib-imgsz")
    with pytest.raises(UserError, match=f"^--imgsz must be a positive multiple of 32, got {imgsz}$"):
        check_imgsz(imgsz, spec)
    with pytest.raises(UserError, match=f"^--size must be a positive multiple of 64, got {imgsz}$"):
        check_imgsz(imgsz, 64, "--size")


def test_spec_with_unknown_conv_is_refused():
    spec = model_spec("yolov5n", nc=3)
    spec.channels["model.99.conv"] = 8
    with pytest.raises(UserError, match="model.99.conv"):
        build_model(spec)


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(UserError, match="did you mean"):
        model_spec("yolov5ss")


def test_probe_runs_one_zero_image_in_eval_mode_and_leaves_no_trace():
    model = build_model(model_spec("yolov5n", nc=2)).train()
    seen = {}

    def after(m, inputs, out):
        seen["out"] = (tuple(out.shape), out.requires_grad, m.training)

    probe(model, 64, {"model.0.conv": after}, {"model.0.conv": lambda m, inputs: seen.setdefault("in", inputs[0])})
    assert seen["out"] == ((1, 16, 32, 32), False, False)
    assert tuple(seen["in"].shape) == (1, 3, 64, 64) and seen["in"].abs().sum() == 0
    conv = model.model[0].conv
    assert model.training and not conv._forward_hooks and not conv._forward_pre_hooks

    def boom(m, inputs, out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        probe(model, 64, {"model.0.conv": boom})
    assert model.training and not conv._forward_hooks
