"""The channel graph on a hand-made model: depthwise convs, concat, residual add, grouped conv, reshape."""

import torch
from torch import nn

from yoloslim.models.blocks import Conv
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.models.spec import ArchSpec, Widths
from yoloslim.prune.allocate import CostModel, plan_channels
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.importance import BNScale, FilterNorm
from yoloslim.prune.surgery import apply_plan, mask_model


class Toy(nn.Module):
    """stem -> depthwise-separable -> cat(stem, dw) -> residual -> grouped conv -> view -> head."""

    def __init__(self, spec: ArchSpec, record: bool = False) -> None:
        super().__init__()
        self.spec = spec
        w = Widths(spec, record)
        c0 = w.ch("stem.conv", 16)
        self.stem = Conv(3, c0, 3, 2)
        self.dw = Conv(c0, w.ch("dw.conv", c0), 3, 1, g=c0)  # depthwise: width follows its input
        self.pw = Conv(c0, w.ch("pw.conv", 24), 1)
        c_cat = c0 + self.pw.conv.out_channels
        self.a = Conv(c_cat, w.ch("a.conv", 32), 1)
        ca = self.a.conv.out_channels
        self.b = Conv(ca, w.ch("b.conv", ca), 3)  # residual with a
        self.dw2 = Conv(self.b.conv.out_channels, w.ch("dw2.conv", self.b.conv.out_channels), 3, 1,
                        g=self.b.conv.out_channels)
        self.grouped = Conv(self.b.conv.out_channels, w.ch("grouped.conv", 16), 3, 1, g=4)
        self.side = Conv(self.b.conv.out_channels, w.ch("side.conv", 8), 1)
        self.head = nn.Conv2d(self.grouped.conv.out_channels + self.side.conv.out_channels, 10, 1)
        self.flatsrc = nn.Conv2d(self.b.conv.out_channels, w.ch("flatsrc", 8), 1)
        self.flat = nn.Conv2d(self.flatsrc.out_channels, 4, 1)
        w.check_all_used()

    def forward(self, x):
        s = self.stem(x)  # (b, 16, h/2, w/2)
        y = self.pw(self.dw(s))
        a = self.a(torch.cat((s, y), 1))
        r = a + self.b(a)
        r = self.dw2(r) * r
        f = self.flatsrc(r)
        f = f.view(f.shape[0], 8, -1).view(f.shape)  # a reshape the graph cannot follow
        return [self.head(torch.cat((self.grouped(r), self.side(r)), 1)), self.flat(f)]

    @property
    def head_convs(self):
        return [self.head, self.flat]


def toy_spec() -> ArchSpec:
    spec = ArchSpec(family="toy", name="toy", nc=1)
    Toy(spec, record=True)
    return spec


def toy():
    torch.manual_seed(0)
    model = Toy(toy_spec())
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.05
            m.bias.data = torch.rand(m.num_features, generator=g) - 0.5
            m.running_mean = torch.rand(m.num_features, generator=g) - 0.5
    return model.eval()


def test_groups_of_hand_made_model():
    graph = ChannelGraph.trace(toy())
    stem = graph.group_of("stem.conv")
    assert stem.prunable
    assert [m.module for m in stem.depthwise] == ["dw.conv"]
    assert {m.module: m.offset for m in stem.consumers} == {"pw.conv": 0, "a.conv": 0}
    assert {m.module for m in stem.bns} == {"stem.bn", "dw.bn"}
    pw = graph.group_of("pw.conv")
    assert {m.module: m.offset for m in pw.consumers} == {"a.conv": 16}
    res = graph.group_of("a.conv")
    assert res.producers == ["a.conv", "b.conv"]  # the residual add couples them
    assert [m.module for m in res.depthwise] == ["dw2.conv"]
    assert not res.prunable and "grouped" in res.reason  # it feeds a grouped conv (groups=4)
    assert not graph.group_of("grouped.conv").prunable
    assert not graph.group_of("flatsrc").prunable  # view() is beyond the graph
    assert "cannot follow" in graph.group_of("flatsrc").reason
    assert graph.group_of("side.conv").prunable  # consumed by the head at offset 16
    assert {m.module: m.offset for m in graph.group_of("side.conv").consumers} == {"head": 16}
    assert not graph.group_of("head").prunable


def test_masked_equals_compact_with_depthwise():
    model = toy()
    graph = ChannelGraph.trace(model)
    for imp, global_rank in [(BNScale(), True), (FilterNorm(2), False)]:
        plan = plan_channels(model, graph, imp, ratio=0.5, global_rank=global_rank, round_to=1)
        assert {graph.groups[g].name for g in plan.keep} == {"stem.conv", "pw.conv", "side.conv"}
        compact = apply_plan(model, plan, build=Toy).eval()
        kept = len(plan.keep[graph.group_of("stem.conv").id])
        assert compact.dw.conv.groups == compact.dw.conv.out_channels == kept
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            a, b = mask_model(model, plan)(x), compact(x)
        assert max((p - q).abs().max().item() for p, q in zip(a, b, strict=True)) < 1e-5


def test_cost_model_matches_profile():
    model = toy()
    graph = ChannelGraph.trace(model)
    plan = plan_channels(model, graph, BNScale(), ratio=0.5, round_to=1)
    cost = CostModel(model, graph, imgsz=32)
    params, flops = cost.cost({g: len(k) for g, k in plan.keep.items()})
    compact = apply_plan(model, plan, build=Toy)
    assert params == count_params(compact)
    assert flops == round(total_gflops(profile(compact, 32)) * 1e9)


def test_fold_bias_matches_gamma_only_mask_inside():
    from yoloslim.prune.surgery import fold_bias

    model = toy()
    graph = ChannelGraph.trace(model)
    plan = plan_channels(model, graph, BNScale(), ratio=0.5, round_to=1)
    compact = apply_plan(model, plan, build=Toy).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = mask_model(model, plan, beta=False)(x)[0]  # removed channels emit act(β)
        plain = compact(x)[0]
        assert fold_bias(model, compact, plan) == []
        folded = compact(x)[0]
    inner = (slice(None), slice(None), slice(8, 24), slice(8, 24))  # away from zero-padded borders
    assert (folded - ref)[inner].abs().max() < 1e-4
    assert (plain - ref)[inner].abs().max() > 1e-2  # without folding the outputs move


class Splitter(nn.Module):
    """A conv chunked in two halves, each read by its own conv; then a split that cuts across two convs."""

    def __init__(self, spec: ArchSpec, record: bool = False) -> None:
        super().__init__()
        self.spec = spec
        w = Widths(spec, record)
        self.stem = Conv(3, w.ch("stem.conv", 16), 3, 2)
        half = self.stem.conv.out_channels // 2
        self.left = Conv(half, w.ch("left.conv", 8), 1)
        self.right = Conv(half, w.ch("right.conv", 8), 1)
        self.head = nn.Conv2d(12, 2, 1)
        self.rest = nn.Conv2d(self.left.conv.out_channels + self.right.conv.out_channels - 12, 2, 1)
        w.check_all_used()

    def forward(self, x):
        a, b = self.stem(x).chunk(2, 1)  # the halves get their own groups
        y = torch.cat((self.left(a), self.right(b)), 1)  # (b, 16, h, w)
        p, q = y.split([12, 4], 1)  # 12 cuts through right.conv's 8 channels: beyond the graph
        return [self.head(p), self.rest(q)]

    @property
    def head_convs(self):
        return [self.head, self.rest]


def test_split_pieces_on_source_boundaries_are_groups_of_their_own():
    spec = ArchSpec(family="toy", name="splitter", nc=1)
    Splitter(spec, record=True)
    graph = ChannelGraph.trace(Splitter(spec).eval())
    a, b = [g for g in graph.groups if "stem.conv" in g.producers]
    assert a.prunable and b.prunable and (a.size, b.size) == (8, 8)
    assert (a.rows("stem.conv"), b.rows("stem.conv")) == (slice(0, 8), slice(8, 16))
    assert [m.module for m in a.consumers] == ["left.conv"] and [m.module for m in b.consumers] == ["right.conv"]
    assert [m.offset for m in b.bns] == [8]  # the stem's batch norm holds both halves
    for conv in ("left.conv", "right.conv"):
        assert not graph.group_of(conv).prunable and "across" in graph.group_of(conv).reason
