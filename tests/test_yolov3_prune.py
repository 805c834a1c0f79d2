"""Pruning the YOLOv3 family: masked == compact for slim / l1 / layer, and pruned darknet round trips."""

import pytest
import torch
from torch import nn

from helpers import count_params, max_diff, randomize_bn
from yoloslim.deploy.darknet_io import load_darknet, write_darknet
from yoloslim.models import build_model, model_spec
from yoloslim.models.darknet_cfg import parse_cfg
from yoloslim.models.spec import ArchSpec
from yoloslim.prune.allocate import plan_channels
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.importance import BNScale
from yoloslim.prune.layers import apply_layer_plan, find_blocks, mask_layers, plan_layers
from yoloslim.prune.surgery import apply_plan

BIG = ("yolov3", "yolov3-spp", "yolov3-mobilenet", "yolov3-mobilenetv2")  # narrowed to keep tests cheap




def small_model(name: str, nc: int = 2, seed: int = 0) -> nn.Module:
    """The preset (widths / 8 for the big ones) with random batch-norm statistics, in eval mode."""
    spec = model_spec(name, nc)
    if name in BIG:
        spec.channels = {k: max(2, v // 8) for k, v in spec.channels.items()}
    torch.manual_seed(seed)
    return randomize_bn(build_model(spec), seed)






def test_depthwise_convs_are_coupled_with_their_input():
    model = small_model("yolov3-mobilenetv2")
    graph = ChannelGraph.trace(model)
    dw = graph.group_of("module_list.3.conv")  # the 1x1 expansion feeding the depthwise conv 4
    assert [m.module for m in dw.depthwise] == ["module_list.4.conv"] and dw.prunable
    unit = graph.group_of("module_list.13.m.0.cv1.conv")  # inside an inverted residual unit
    assert [m.module for m in unit.depthwise] == ["module_list.13.m.0.cv2.conv"]
    plan = plan_channels(model, graph, BNScale(), ratio=0.4, min_channels=1, round_to=1)
    assert dw.id in plan.keep
    compact = apply_plan(model, plan)
    c4 = compact.module_list["4"].conv
    assert c4.groups == c4.in_channels == c4.out_channels == compact.module_list["3"].conv.out_channels
    assert c4.out_channels < model.module_list["4"].conv.out_channels


@pytest.mark.parametrize("name", ["yolov3", "yolov3-mobilenetv2"])
def test_layer_pruning_removes_residual_units(name):
    model = small_model(name)
    graph = ChannelGraph.trace(model)
    blocks = find_blocks(model, graph)
    assert len(blocks) == sum(model.spec.depths.values())  # every residual unit is removable
    plan = plan_layers(model, graph, ratio=0.5)
    compact, masked = apply_layer_plan(model, plan).eval(), mask_layers(model, plan).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(masked(x), compact(x)) < 1e-4
    assert sum(compact.spec.depths.values()) == len(blocks) - plan.count
    assert plan.count == round(0.5 * len(blocks))


def prune_both_ways(model: nn.Module) -> nn.Module:
    """Channel pruning (slim, 50 %), then layer pruning (half the units) when the model has stages."""
    graph = ChannelGraph.trace(model)
    model = apply_plan(model, plan_channels(model, graph, BNScale(), ratio=0.5, min_channels=1)).eval()
    if model.spec.depths:
        graph = ChannelGraph.trace(model)
        model = apply_layer_plan(model, plan_layers(model, graph, ratio=0.5)).eval()
    return model


@pytest.mark.parametrize("name", ["yolov3", "yolov3-tiny"])
def test_pruned_model_exports_to_darknet_and_reimports(tmp_path, name):
    model = small_model(name, nc=3)
    pruned = prune_both_ways(model)
    write_darknet(pruned, tmp_path / "p.cfg", tmp_path / "p.weights", imgsz=64)
    again, info = load_darknet(tmp_path / "p.weights", cfg=tmp_path / "p.cfg")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(pruned(x), again(x)) == 0.0
    sections = parse_cfg((tmp_path / "p.cfg").read_text())
    convs = [s for s in sections if s["type"] == "convolutional"]
    widths = [m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)]
    assert [s["filters"] for s in convs] == widths  # the pruned widths, in darknet order
    assert info.spec.nc == 3 and count_params(again) == count_params(pruned) < count_params(model)
    if name == "yolov3":  # half the residual units are gone; the routes were renumbered to match
        assert len(sections) - 1 == 107 - 3 * (23 - sum(pruned.spec.depths.values()))
        routes = [s["layers"] for s in sections if s["type"] == "route"]
        shortcuts = [i for i, s in enumerate(sections[1:]) if s["type"] == "shortcut"]
        assert routes[0] == -4 and routes[1][0] == -1 and routes[1][1] in shortcuts


def test_exported_spec_is_the_pruned_one_after_reimport(tmp_path):
    model = prune_both_ways(small_model("yolov3"))
    write_darknet(model, tmp_path / "p.cfg", tmp_path / "p.weights")
    again, _ = load_darknet(tmp_path / "p.weights", cfg=tmp_path / "p.cfg")
    # the re-imported cfg is the new template: its stages hold exactly the remaining units
    assert sorted(again.spec.depths.values()) == sorted(v for v in model.spec.depths.values() if v)
    rebuilt = build_model(ArchSpec.from_json(again.spec.to_json()))
    assert count_params(rebuilt) == count_params(model)


def test_pruned_model_file_round_trips(tmp_path):
    from yoloslim.models.io import ModelInfo, load_model, save_model

    pruned = prune_both_ways(small_model("yolov3-mobilenetv2"))
    info = ModelInfo(pruned.spec, ["a", "b"], 64).with_event("pruned", method="slim+layer")
    save_model(tmp_path / "p.safetensors", pruned, info)
    loaded, got = load_model(tmp_path / "p.safetensors")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(pruned(x), loaded.eval()(x)) == 0.0
    assert got.spec.depths == pruned.spec.depths and got.spec.channels == pruned.spec.channels
