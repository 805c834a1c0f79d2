"""Group L2 norm and first-order Taylor importance, and what ``--method auto`` chooses."""

from __future__ import annotations

import pytest
import torch

from helpers import randomize_bn
from yoloslim.cli import main
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, read_info, save_model
from yoloslim.prune import ChannelGraph, PruneOptions, prune_model
from yoloslim.prune.importance import GroupNorm, Taylor
from yoloslim.prune.pipeline import METHODS, auto_method


@pytest.fixture(scope="module")
def v5n():
    torch.manual_seed(0)
    model = randomize_bn(create_model("yolov5n", nc=3))
    return model, ChannelGraph.trace(model)


def test_group_norm_sums_every_member_producers_consumers_and_bns(v5n):
    model, graph = v5n
    g = graph.group_of("model.4.cv1.conv")  # a residual chain: 3 producers, their BNs, several consumers
    assert len(g.producers) > 1 and g.consumers
    expect = torch.zeros(g.size)
    for name in g.producers:
        expect += model.get_submodule(name).weight.detach().flatten(1).pow(2).sum(1)
    for mem in g.consumers:
        w = model.get_submodule(mem.module).weight.detach()[:, mem.offset:mem.offset + g.size]
        expect += w.transpose(0, 1).flatten(1).pow(2).sum(1)
    for mem in g.bns:
        bn = model.get_submodule(mem.module)
        expect += bn.weight.detach()[mem.offset:mem.offset + g.size] ** 2 + bn.bias.detach()[
            mem.offset:mem.offset + g.size] ** 2
    assert torch.allclose(GroupNorm()(model, g), expect.sqrt(), rtol=1e-5)
    normalized = GroupNorm(normalize=True)(model, g)
    assert abs(float(normalized.mean()) - 1.0) < 1e-5


def test_taylor_is_w_times_grad_over_the_group_and_needs_gradients(v5n):
    model, graph = v5n
    g = graph.group_of("model.0.conv")
    with pytest.raises(ValueError, match="gradients"):
        Taylor()(model, g)
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # |w · 1| = |w|: the scores become the group's L1 norms
    try:
        scores = Taylor()(model, g)
    finally:
        model.zero_grad(set_to_none=True)
    w = model.get_submodule("model.0.conv").weight.detach()
    assert torch.all(scores >= w.flatten(1).abs().sum(1) - 1e-5)  # producers plus consumers and BN


def test_taylor_without_data_is_refused(v5n):
    model, graph = v5n
    with pytest.raises(UserError, match="needs --data"):
        prune_model(model, PruneOptions(method="taylor", ratio=0.3), graph)


def test_auto_resolves_to_the_measured_winner():
    assert "auto" in METHODS and all(m in METHODS for m in ("group", "taylor"))
    assert auto_method() == ("group", False)
    opts = PruneOptions(method="auto", ratio=0.3)
    assert opts.resolve().method == "group" and opts.resolve().global_rank is False
    assert PruneOptions(method="auto", ratio=0.3, global_rank=True).resolve().global_rank is True
    assert PruneOptions(method="l1", ratio=0.3).resolve().method == "l1"


def test_prune_cli_without_method_uses_auto(tmp_path, v5n):
    model, _ = v5n
    weights = tmp_path / "base.safetensors"
    save_model(weights, model, ModelInfo(model.spec, ["a", "b", "c"], 64))
    out = tmp_path / "p.safetensors"
    assert main(["prune", "--weights", str(weights), "--ratio", "0.3", "--latency-runs", "0", "--out", str(out)]) == 0
    assert read_info(out).history[-1]["method"] == "group"
