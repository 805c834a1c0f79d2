"""Channel pruning invariants on small YOLOv5 models (DESIGN.md, pruning engine)."""

import pytest
import torch

from helpers import max_diff, randomize_bn
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.prune.allocate import plan_channels
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.importance import BNScale, FilterNorm, GroupNorm, Taylor
from yoloslim.prune.surgery import apply_plan, mask_model

# slim, l1 and global normalised group norm run on every model in tests/test_model_contract.py
METHODS = {"l2": (FilterNorm(2), False), "group": (GroupNorm(), False),
           "taylor": (Taylor(), False), "taylor-global": (Taylor(normalize=True), True)}






@pytest.fixture(scope="module")
def v5n():
    torch.manual_seed(0)
    model = randomize_bn(create_model("yolov5n", nc=3))
    return model, ChannelGraph.trace(model)




@pytest.mark.parametrize("method", list(METHODS))
def test_masked_equals_compact(v5n, method):
    model, graph = v5n
    imp, global_rank = METHODS[method]
    if isinstance(imp, Taylor):  # any gradients do to test the surgery
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
    try:
        plan = plan_channels(model, graph, imp, ratio=0.5, global_rank=global_rank, min_channels=1)
    finally:
        model.zero_grad(set_to_none=True)
    compact = apply_plan(model, plan).eval()
    masked = mask_model(model, plan).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b, ref = masked(x), compact(x), model(x)
    assert max_diff(a, b) < 1e-4
    assert max_diff(a, ref) > 1e-3  # the plan really changed something
    assert sum(p.numel() for p in compact.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    assert [o.shape for o in b] == [o.shape for o in ref]  # detect outputs keep their channels


def test_coupled_members_lose_the_same_indices(v5n):
    model, graph = v5n
    plan = plan_channels(model, graph, BNScale(), ratio=0.4, round_to=1)
    g = graph.group_of("model.4.cv1.conv")
    assert g.producers == ["model.4.cv1.conv", "model.4.m.0.cv2.conv", "model.4.m.1.cv2.conv"]
    assert g.id in plan.keep
    compact = apply_plan(model, plan)
    keep = plan.keep[g.id]
    for name in g.producers:  # every producer's BN keeps exactly the group's kept channels
        bn_old = model.get_submodule(name.replace(".conv", ".bn"))
        bn_new = compact.get_submodule(name.replace(".conv", ".bn"))
        assert torch.equal(bn_new.weight, bn_old.weight[keep])
        assert torch.equal(bn_new.running_var, bn_old.running_var[keep])
    # the SPPF concat reads one group four times: the consumer keeps the same columns at each offset
    sppf = graph.group_of("model.9.cv1.conv")
    assert sorted(m.offset for m in sppf.consumers) == [0, 128, 256, 384]


def test_head_outputs_and_input_are_fixed(v5n):
    model, graph = v5n
    fixed = {g.name: g.reason for g in graph.groups if not g.prunable}
    for name in ("model.24.m.0", "model.24.m.1", "model.24.m.2"):
        assert "output" in fixed[name] or "head" in fixed[name]
    assert any("input" in r for r in fixed.values())
    assert len(graph.prunable) == 50


def test_unsafe_ratio_is_refused_with_the_safe_one(v5n):
    model, graph = v5n
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"largest safe ratio is (0\.\d+)") as e:
        plan_channels(model, graph, BNScale(), ratio=0.98)
    safe = float(str(e.value).split("largest safe ratio is ")[1].split(":")[0])
    assert 0 < safe < 0.98
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # nothing changed
    plan = plan_channels(model, graph, BNScale(), ratio=safe)  # the named ratio works
    assert all(len(k) > 0 for k in plan.keep.values())
    with pytest.raises(UserError, match="safe"):
        plan_channels(model, graph, BNScale(), ratio=min(safe + 0.01, 0.999))


def test_min_channels_holds_groups(v5n):
    model, graph = v5n
    plan = plan_channels(model, graph, BNScale(), ratio=0.98, min_channels=2)
    assert plan.held and all(len(k) >= 2 for k in plan.keep.values())
    out = apply_plan(model, plan).eval()(torch.rand(1, 3, 64, 64))
    assert out[0].shape == (1, 24, 8, 8)


def test_round_to_gives_multiples(v5n):
    model, graph = v5n
    plan = plan_channels(model, graph, FilterNorm(1), ratio=0.37, global_rank=False, round_to=8)
    widths = plan.widths()
    assert widths and all(w % 8 == 0 and w >= 8 for w in widths.values())
    compact = apply_plan(model, plan)
    for name, w in widths.items():
        assert compact.get_submodule(name).out_channels == w
