"""YOLOX through the shared pruning engine: masked == compact, single-conv and stage pruning."""

import pytest
import torch
from torch import nn

from helpers import max_diff, randomize_bn
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.prune import ChannelGraph, PruneOptions, prune_model
from yoloslim.prune.layers import mask_layers
from yoloslim.prune.surgery import mask_model


def _randomized(name: str) -> nn.Module:
    """A model with random γ, β and BN statistics, so that a wrong slice shows in the outputs."""
    torch.manual_seed(0)
    return randomize_bn(create_model(name, nc=2), seed=1)


@pytest.fixture(scope="module")
def models():
    out = {}
    for name in ("yolox-nano", "yolox-s"):
        model = _randomized(name)
        out[name] = (model, ChannelGraph.trace(model))
    return out


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)




X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
# one training batch (uint8 images, [img, cls, cx, cy, w, h] targets) for the gradients of taylor
BATCHES = [(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)),
            torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [1, 1, 0.3, 0.6, 0.2, 0.2]]))]


@pytest.mark.parametrize("name", ["yolox-nano", "yolox-s"])
@pytest.mark.parametrize("method", ["taylor", "layer"])  # slim, l1, group: tests/test_model_contract.py
def test_masked_equals_compact(models, name, method):
    model, graph = models[name]
    result = prune_model(model, PruneOptions(method=method, ratio=0.5), graph, batches=BATCHES)
    compact = result.model
    masked = mask_layers(model, result.plan) if method == "layer" else mask_model(model, result.plan)
    assert max_diff(_outputs(masked, X), _outputs(compact, X)) < 1e-4
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())
    # the head's prediction convs keep their outputs; layer pruning removes CSP bottlenecks
    assert [c.out_channels for c in compact.head_convs] == [4, 4, 4, 1, 1, 1, 2, 2, 2]
    if method == "layer":
        assert result.removed_blocks and all(".m." in b for b in result.removed_blocks)
        removed = len(result.removed_blocks)
        assert sum(compact.spec.depths.values()) == sum(model.spec.depths.values()) - removed
    else:  # stems and branches of the decoupled head are prunable
        assert compact.spec.channels["head.stems.0.conv"] < model.spec.channels["head.stems.0.conv"]


def _changed(before: nn.Module, after: nn.Module) -> set[str]:
    """State-dict keys whose shape changed."""
    a, b = before.state_dict(), after.state_dict()
    assert set(a) == set(b)
    return {k for k in a if a[k].shape != b[k].shape}


def test_single_conv_pruning_changes_only_that_conv_and_its_consumers(models):
    model, graph = models["yolox-s"]
    conv = "backbone.backbone.dark2.0.conv"
    result = prune_model(model, PruneOptions(method="l1", ratio=0.4, include=[conv], round_to=1), graph)
    compact = result.model
    widths = {k for k, v in compact.spec.channels.items() if v != model.spec.channels[k]}
    assert widths == {conv}
    assert compact.spec.channels[conv] in (38, 39)  # 40 % of 64 removed, rounded either way
    assert _changed(model, compact) == {
        f"{conv}.weight", "backbone.backbone.dark2.0.bn.weight", "backbone.backbone.dark2.0.bn.bias",
        "backbone.backbone.dark2.0.bn.running_mean", "backbone.backbone.dark2.0.bn.running_var",
        "backbone.backbone.dark2.1.conv1.conv.weight", "backbone.backbone.dark2.1.conv2.conv.weight",
    }
    same = {k: v for k, v in compact.state_dict().items() if not k.startswith("backbone.backbone.dark2.")}
    full = model.state_dict()
    assert all(torch.equal(v, full[k]) for k, v in same.items())
    masked = mask_model(model, result.plan)
    assert max_diff(_outputs(masked, X), _outputs(compact, X)) < 1e-4


def test_depthwise_single_conv_pruning_carries_the_depthwise_conv(models):
    model, graph = models["yolox-nano"]
    conv = "backbone.backbone.dark3.0.pconv.conv"  # feeds dark3.1's 1x1 convs
    result = prune_model(model, PruneOptions(method="l2", ratio=0.5, include=[conv]), graph)
    widths = {k for k, v in result.model.spec.channels.items() if v != model.spec.channels[k]}
    assert widths == {conv}
    assert result.model.backbone.backbone.dark3[1].conv1.conv.in_channels == 32


def test_stage_pruning_changes_only_the_stage_and_what_reads_it(models):
    model, graph = models["yolox-s"]
    stage = "backbone.backbone.dark2"
    result = prune_model(model, PruneOptions(method="slim", ratio=0.5, include=[stage]), graph)
    compact = result.model
    widths = {k for k, v in compact.spec.channels.items() if v != model.spec.channels[k]}
    assert widths and all(k.startswith(stage + ".") for k in widths)
    outside = {k for k in _changed(model, compact) if not k.startswith(stage + ".")}
    assert outside <= {"backbone.backbone.dark3.0.conv.weight"}  # dark3's input conv reads dark2's output
    masked = mask_model(model, result.plan)
    assert max_diff(_outputs(masked, X), _outputs(compact, X)) < 1e-4


def test_layer_pruning_limited_to_a_stage(models):
    model, graph = models["yolox-s"]
    opts = PruneOptions(method="layer", blocks=2, include=["backbone.backbone.dark3"])
    result = prune_model(model, opts, graph)
    assert len(result.removed_blocks) == 2
    assert all(b.startswith("backbone.backbone.dark3.1.m.") for b in result.removed_blocks)
    assert result.model.spec.depths["backbone.backbone.dark3.1"] == 1
    assert len(result.model.backbone.backbone.dark3[1].m) == 1


def test_pruned_model_round_trips_and_trains(models, tmp_path):
    model, graph = models["yolox-nano"]
    compact = prune_model(model, PruneOptions(method="slim", ratio=0.4), graph).model
    info = ModelInfo(compact.spec, ["a", "b"], 64).with_event("pruned", method="slim", ratio=0.4)
    loaded, _ = load_model(save_model(tmp_path / "p.safetensors", compact, info))
    assert max_diff(_outputs(loaded, X), _outputs(compact, X)) == 0
    from yoloslim.loss.yolox import YOLOXLoss

    loaded.train()
    loss, _ = YOLOXLoss(loaded)(loaded(X), torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4]]))
    loss.backward()
    assert torch.isfinite(loss) and loaded.backbone.backbone.stem.conv.conv.weight.grad is not None
