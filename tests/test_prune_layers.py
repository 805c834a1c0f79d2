"""Layer pruning: residual blocks found from the graph, removed, renumbered; masked == compact."""

import pytest
import torch

from helpers import randomize_bn
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.layers import apply_layer_plan, find_blocks, mask_layers, plan_layers


@pytest.fixture(scope="module")
def v5s():
    torch.manual_seed(0)
    model = randomize_bn(create_model("yolov5s", nc=2))
    return model, ChannelGraph.trace(model)


def test_finds_the_residual_bottlenecks_only(v5s):
    model, graph = v5s
    blocks = find_blocks(model, graph)
    # backbone C3s have shortcuts (1+2+3+1 blocks); the neck's C3(shortcut=False) blocks are not residual
    assert [b.name for b in blocks] == ["model.2.m.0", "model.4.m.0", "model.4.m.1", "model.6.m.0",
                                        "model.6.m.1", "model.6.m.2", "model.8.m.0"]
    assert blocks[0].branch == "model.2.m.0.cv2.bn"


def test_masked_equals_compact_and_depths_shrink(v5s):
    model, graph = v5s
    plan = plan_layers(model, graph, blocks=3)
    assert plan.count == 3
    compact = apply_layer_plan(model, plan).eval()
    removed_from = {s: len(v) for s, v in plan.removed.items()}
    for stage, n in removed_from.items():
        assert compact.spec.depths[stage] == model.spec.depths[stage] - n
    assert all(compact.spec.depths[s] >= 1 for s in compact.spec.depths)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b, ref = mask_layers(model, plan)(x), compact(x), model(x)
    assert max((p - q).abs().max().item() for p, q in zip(a, b, strict=True)) < 1e-4
    assert max((p - q).abs().max().item() for p, q in zip(a, ref, strict=True)) > 1e-4
    # the blocks after a removed one are renumbered D.m.0 ... D.m.{n-1}
    for stage in removed_from:
        assert len(compact.get_submodule(f"{stage}.m")) == compact.spec.depths[stage]


def test_weakest_blocks_go_first(v5s):
    model, graph = v5s
    model = randomize_bn(create_model("yolov5s", nc=2), seed=3)
    graph = ChannelGraph.trace(model)
    with torch.no_grad():
        model.get_submodule("model.6.m.1.cv2.bn").weight.mul_(0.01)
    plan = plan_layers(model, graph, blocks=1)
    assert plan.removed == {"model.6": [1]}
    compact = apply_layer_plan(model, plan)
    # old model.6.m.2 is the new model.6.m.1
    assert torch.equal(compact.get_submodule("model.6.m.1.cv1.conv").weight,
                       model.get_submodule("model.6.m.2.cv1.conv").weight)


def test_too_many_blocks_refused(v5s):
    model, graph = v5s
    with pytest.raises(UserError, match="largest safe ratio is 0.428"):
        plan_layers(model, graph, ratio=0.6)
    with pytest.raises(UserError, match="between 0 and 3"):
        plan_layers(model, graph, blocks=4)


def test_include_limits_layer_pruning(v5s):
    model, graph = v5s
    plan = plan_layers(model, graph, ratio=0.6, include=["model.6"])  # 2 of the 3 blocks under model.6
    assert list(plan.removed) == ["model.6"] and plan.count == 2
    with pytest.raises(UserError, match="only 2 can go"):
        plan_layers(model, graph, ratio=1.0, include=["model.6"])
