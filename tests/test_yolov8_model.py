"""YOLOv8 / YOLO11: the published sizes and key layout, DFL decoding, and pruning of the split / attention
blocks with every method (the shared invariants run in test_model_contract.py).

The reference numbers were read from ultralytics 8.4.190 in a separate environment (never a dependency):
``YOLO("yolov8n.yaml").model`` parameter counts and state-dict keys, and the fused model's GFLOPs at 640
as its summary prints them. Loading its state dicts into these models gave the same raw maps (to 1e-6)
and the same decoded boxes: bench/v8_reference.py repeats that check.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import max_diff, randomize_bn
from test_model_contract import tiny
from yoloslim.deploy.fuse import fuse_model
from yoloslim.errors import UserError
from yoloslim.models import build_model, model_spec
from yoloslim.models.decode import Decoder
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.prune.allocate import CostModel, plan_channels
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.importance import Taylor, importance_for
from yoloslim.prune.layers import apply_layer_plan, mask_layers, plan_layers
from yoloslim.prune.surgery import ChannelPlan, apply_plan, mask_model

# name: (parameters, state-dict keys, GFLOPs of the fused model at 640), 80 classes, ultralytics 8.4.190
REFERENCE = {
    "yolov8n": (3_157_200, 355, 8.7),
    "yolov8s": (11_166_560, 355, 28.6),
    "yolo11n": (2_624_080, 499, 6.5),
    "yolo11s": (9_458_752, 499, 21.5),
}


def meta_model(name: str, nc: int = 80) -> nn.Module:
    with torch.device("meta"):
        return build_model(model_spec(name, nc))


@pytest.mark.parametrize("name", list(REFERENCE))
def test_sizes_and_keys_are_the_references(name):
    params, keys, _ = REFERENCE[name]
    model = meta_model(name)
    state = model.state_dict()
    assert count_params(model) == params
    assert len(state) == keys
    head = "model.22" if name.startswith("yolov8") else "model.23"
    for key in ("model.0.conv.weight", "model.2.cv1.conv.weight", "model.2.m.0.cv2.bn.running_var",
                f"{head}.cv2.0.0.conv.weight", f"{head}.cv2.2.2.bias", f"{head}.cv3.1.2.weight",
                f"{head}.dfl.conv.weight"):
        assert key in state, key
    assert tuple(state[f"{head}.cv2.0.2.weight"].shape)[0] == 64  # 4 sides x reg_max 16
    assert tuple(state[f"{head}.cv3.0.2.weight"].shape)[0] == 80
    if name.startswith("yolo11"):
        assert tuple(state["model.10.m.0.attn.qkv.conv.weight"].shape)[:2] == (
            (256, 128) if name == "yolo11n" else (512, 256))
        assert state[f"{head}.cv3.0.0.0.conv.weight"].shape[1] == 1  # depthwise class branch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_gflops_as_the_reference_reports(name):
    model = fuse_model(build_model(model_spec(name, 80)))
    gflops = sum(r.flops for r in profile(model, 640)) / 1e9
    assert round(gflops, 1) == REFERENCE[name][2]


def test_yolo11_scales_switch_c3k_and_the_dfl_conv_is_fixed():
    n, m = meta_model("yolo11n"), meta_model("yolo11m")
    assert type(n.get_submodule("model.2.m.0")).__name__ == "Bottleneck3"  # n / s: as the yaml says
    assert type(n.get_submodule("model.6.m.0")).__name__ == "C3k"
    assert type(m.get_submodule("model.2.m.0")).__name__ == "C3k"  # m / l / x: C3k everywhere
    small = build_model(model_spec("yolov8n", 2))
    dfl = small.detect.dfl.conv
    assert not dfl.weight.requires_grad
    assert torch.equal(dfl.weight.flatten(), torch.arange(16.0))
    assert (small.reg_max, small.nc, small.strides) == (16, 2, [8, 16, 32])


def test_dfl_decoding_of_a_hand_built_map():
    spec = model_spec("yolov8n", 2)
    raw = [torch.zeros(1, 64 + 2, 64 // s, 64 // s) for s in (8, 16, 32)]
    p = raw[0]  # stride 8; the cell at column 1, row 0
    for side, dist in enumerate((2, 3, 4, 1)):  # l, t, r, b in strides: one bin holds (almost) all the mass
        p[0, side * 16 + dist, 0, 1] = 40.0
    p[0, 64 + 1, 0, 1] = math.log(3)  # class 1: sigmoid 0.75; class 0 stays at 0.5
    rows = Decoder(spec)(raw)  # (1, N, 5 + nc)
    assert rows.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 7)
    # anchor (1.5, 0.5): x1 = -0.5, y1 = -2.5, x2 = 5.5, y2 = 1.5 -> centre (2.5, -0.5), size 6 x 4, times 8
    assert torch.allclose(rows[0, 1], torch.tensor([20.0, -4.0, 48.0, 32.0, 1.0, 0.5, 0.75]), atol=1e-4)
    # a cell of zeros: every bin equal, each side 7.5 strides from the anchor point
    assert torch.allclose(rows[0, 8 * 8 + 5, :4], torch.tensor([1.5 * 16, 1.5 * 16, 15 * 16, 15 * 16.0]))


def tiny_v8(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(build_model(tiny(model_spec(name, 2))), seed)


def test_split_pieces_are_pruned_independently_and_attention_stays_whole():
    model = tiny_v8("yolo11n")
    graph = ChannelGraph.trace(model)
    a, b = [g for g in graph.groups if "model.2.cv1.conv" in g.producers]  # the two pieces of the split
    assert a.prunable and b.prunable and a.id != b.id
    assert a.rows("model.2.cv1.conv") == slice(0, a.size) and b.rows("model.2.cv1.conv") == slice(a.size, 2 * a.size)
    for conv in ("model.10.m.0.attn.qkv.conv", "model.10.m.0.attn.pe.conv"):
        g = next(g for g in graph.groups if conv in g.producers)
        assert not g.prunable and "attention" in g.reason
    assert graph.group_of("model.10.m.0.attn.proj.conv").prunable  # the residual stream around it is not fixed
    keep = {a.id: torch.arange(1), b.id: torch.arange(b.size - 1)}  # very different cuts of the two halves
    compact = apply_plan(model, ChannelPlan(graph, keep)).eval()
    assert compact.spec.options["split"]["model.2.cv1.conv"] == [1, b.size - 1]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(mask_model(model, ChannelPlan(graph, keep)).eval()(x), compact(x)) < 1e-4


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_every_method_keeps_masked_equal_to_compact(name, tmp_path):
    model = tiny_v8(name)
    graph = ChannelGraph.trace(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    model.train()
    sum(o.square().mean() for o in model(x)).backward()  # gradients for Taylor (any loss will do)
    model.eval()
    for method, global_rank in (("slim", True), ("l1", False), ("l2", False), ("group", False), ("taylor", True)):
        imp = Taylor(normalize=True) if method == "taylor" else importance_for(method, global_rank)
        plan = plan_channels(model, graph, imp, ratio=0.4, global_rank=global_rank, min_channels=1, round_to=1)
        compact, masked = apply_plan(model, plan).eval(), mask_model(model, plan).eval()
        with torch.no_grad():
            a, b = masked(x), compact(x)
        assert max_diff(a, b) < 1e-4, method
        assert max_diff(a, ref) > 1e-3, method
        assert count_params(compact) < 0.8 * count_params(model), method
    model.zero_grad(set_to_none=True)
    # layer pruning: C2f / C3k2 bottlenecks (and C3k's) go, the concat after them reads one piece less
    plan = plan_layers(model, graph, blocks=2)
    compact = apply_layer_plan(model, plan).eval()
    assert sum(compact.spec.depths.values()) == sum(model.spec.depths.values()) - 2
    with torch.no_grad():
        assert max_diff(mask_layers(model, plan).eval()(x), compact(x)) < 1e-4
    # a pruned model (uneven split pieces) saves and loads as any other
    path = save_model(tmp_path / "p.safetensors", compact, ModelInfo(compact.spec, ["a", "b"], 64))
    loaded, _ = load_model(path)
    with torch.no_grad():
        assert max_diff(loaded.eval()(x), compact(x)) == 0.0


def test_a_spec_with_bad_split_sizes_is_refused():
    spec = model_spec("yolov8n", 2)
    bad = spec.copy()
    bad.options["split"]["model.2.cv1.conv"] = [5, 5]
    with pytest.raises(UserError, match="does not add up"):
        build_model(bad)
    bad = spec.copy()
    bad.options["split"]["model.99.cv1.conv"] = [8, 8]
    with pytest.raises(UserError, match="does not split"):
        build_model(bad)
    bad = spec.copy()
    bad.options["split"]["model.2.cv1.conv"] = "16,16"
    with pytest.raises(UserError, match="positive widths"):
        build_model(bad)


def test_full_width_yolo11n_prunes_around_its_attention_heads():
    """At the published width the attention has 2 heads; pruning SPPF and the C2PSA residual stream must
    leave them as they are (a tiny model has one head and would not show it)."""
    model = randomize_bn(build_model(model_spec("yolo11n", 2)), seed=1)
    graph = ChannelGraph.trace(model)
    plan = plan_channels(model, graph, importance_for("l1"), ratio=0.3, global_rank=False, min_channels=1)
    compact = apply_plan(model, plan).eval()
    for m in (model, compact):
        attn = m.get_submodule("model.10.m.0.attn")
        assert (attn.heads, attn.head_dim, attn.key_dim) == (2, 64, 32)
    assert compact.get_submodule("model.9.cv2.conv").out_channels < 256  # SPPF's output, read by C2PSA, was cut
    assert compact.get_submodule("model.10.m.0.attn.proj.conv").out_channels < 128  # and the residual stream
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(mask_model(model, plan).eval()(x), compact(x)) < 1e-4


def test_cost_model_counts_split_convs_as_the_compact_model():
    model = tiny_v8("yolo11n")
    graph = ChannelGraph.trace(model)
    plan = plan_channels(model, graph, importance_for("l1"), ratio=0.5, global_rank=False, min_channels=1)
    params, flops = CostModel(model, graph, imgsz=64).cost({g: len(k) for g, k in plan.keep.items()})
    compact = apply_plan(model, plan)
    assert params == count_params(compact)
    assert flops == round(total_gflops(profile(compact, 64)) * 1e9)
