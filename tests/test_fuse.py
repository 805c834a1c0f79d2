"""Conv+BN fusion: fused == unfused for every model family, and the original is left alone."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from helpers import randomize_bn
from yoloslim.deploy.fuse import count_batchnorms, fuse_conv_bn, fuse_model
from yoloslim.models import MODELS, build_model
from yoloslim.models.profile import count_params


def _family_and_size(fn) -> tuple[str, int]:
    """Family and a size proxy (sum of squared conv widths) of a preset, from its spec alone.

    The spec is made on the meta device when the builder allows it, so no weights are allocated.
    """
    try:
        with torch.device("meta"):
            spec = fn(3)
    except Exception:  # a builder that needs real tensors
        spec = fn(3)
    return spec.family, sum(c * c for c in spec.channels.values())


@functools.cache
def smallest_preset_per_family() -> list[str]:
    """The smallest preset of every family in MODELS when the tests run."""
    best: dict[str, tuple[int, str]] = {}
    for name, fn in MODELS.items():
        family, size = _family_and_size(fn)
        if family not in best or size < best[family][0]:
            best[family] = (size, name)
    return sorted(name for _, name in best.values())  # cached: test_export uses it too




@pytest.mark.parametrize("name", smallest_preset_per_family())
def test_fused_equals_unfused_for_every_family(name):
    model = randomize_bn(build_model(MODELS[name](3)))
    bns = count_batchnorms(model)
    assert bns > 0
    fused = fuse_model(model)
    assert count_batchnorms(fused) == 0
    assert count_batchnorms(model) == bns  # the original is untouched
    assert count_params(fused) < count_params(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert len(ref) == len(out)
    for r, o in zip(ref, out, strict=True):
        assert r.shape == o.shape
        assert (r - o).abs().max().item() < 1e-4


def test_fuse_keeps_spec_and_does_not_share_weights():
    model = randomize_bn(build_model(MODELS["yolov5n"](2)))
    fused = fuse_model(model)
    assert fused.spec.to_json() == model.spec.to_json()
    assert not fused.training
    w0 = model.model[0].conv.weight.clone()
    with torch.no_grad():
        fused.model[0].conv.weight.zero_()
    assert torch.equal(model.model[0].conv.weight, w0)


def test_fuse_conv_bn_with_bias_groups_and_sequential():
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, groups=2, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8, eps=1e-3))
    randomize_bn(seq, seed=3)
    x = torch.randn(2, 4, 16, 16)
    fused = fuse_model(seq)
    assert count_batchnorms(fused) == 0
    with torch.no_grad():
        assert (seq(x) - fused(x)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="BatchNorm of 4 channels"):
        fuse_conv_bn(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(4))
